"""Exactly once as an external system sees it: one idempotency key per logical transition,
across errors, timeouts, `retry()` (Python, CLI, workers); keys unique across runs, tenants,
stores and reused run ids; a try abandoned on its timeout changes nothing that is committed;
a result that cannot be stored is a failed try, recorded, never a crash that repeats."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from agents import Agent, tool
from statemachine import StepContext, Worker
from storage import EmbeddedStore, RedisStore, Store

from ..integration.charge_agent import charge
from ..redis_server import RedisServer

ROOT = Path(__file__).resolve().parents[2]


def agentfsm(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agents", *args], cwd=ROOT, capture_output=True, text=True,
        timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT), **env},
    )  # fmt: skip


async def test_a_charge_that_timed_out_is_retried_under_its_one_key(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "charges.log"
    monkeypatch.setenv("CHARGE_LOG", str(log))
    run = await charge.start(store, {}, run_id="job-2")
    await run.until_done()
    assert run.status == "failed"
    await run.retry()
    paid = await run.until_done()
    assert paid.status == "done"
    keys = log.read_text().splitlines()
    assert len(keys) == 2 and len(set(keys)) == 1  # two tries, one key: the provider dedups
    assert paid.memory.receipt == f"paid under {keys[0]}"
    assert keys[0] == f"job-2:{run.record.nonce}:0:charge"


def test_a_charge_retried_from_the_cli_keeps_its_key(store_url: str, tmp_path: Path) -> None:
    log = tmp_path / "charges.log"
    env = {"CHARGE_LOG": str(log)}
    spec = "tests.integration.charge_agent:charge"
    first = agentfsm("run", spec, "--run-id", "job-3", "--input", "{}", "--store", store_url,
                     env=env)  # fmt: skip
    assert first.returncode == 1, first.stderr
    again = agentfsm("retry", "job-3", "--agent", spec, "--store", store_url, env=env)
    assert again.returncode == 0, again.stderr
    keys = log.read_text().splitlines()
    assert len(keys) == 2 and len(set(keys)) == 1, keys


async def test_a_charge_retried_through_a_worker_keeps_its_key(
    redis_server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "charges.log"
    monkeypatch.setenv("CHARGE_LOG", str(log))
    store = RedisStore.from_url(f"{redis_server.url}?prefix=charge-worker")
    worker = Worker(store, [charge], heartbeat=0.2)
    serving = asyncio.create_task(worker.run())
    try:
        await charge.submit(store, {}, run_id="job-4")
        await settled(store, "job-4", "failed")
        run = await charge.resume(store, "job-4")
        await run.retry()
        await run.release()
        await charge.enqueue(store, "job-4")
        await settled(store, "job-4", "done")
    finally:
        worker.stop()
        await serving
    keys = log.read_text().splitlines()
    assert len(keys) == 2 and len(set(keys)) == 1, keys
    await store.close()


async def settled(store: Store, run_id: str, status: str, within: float = 60) -> None:
    give_up = time.monotonic() + within
    while (record := await store.load(run_id)) is None or record.status != status:
        assert time.monotonic() < give_up, f"{run_id} not {status}: {record}"
        await asyncio.sleep(0.05)


class Loop(BaseModel):
    n: int = 0


def looping(name: str, seen: list[str]) -> Agent[Loop]:
    def count(m: Loop, ctx: StepContext) -> int:
        seen.append(ctx.idempotency_key)
        return m.n + 1

    return Agent(
        name=name, memory=Loop, initial="a", final=["z"],
        transitions=[
            tool("again", "a", "a", count, into="n", guard=lambda m: m.n < 2),
            tool("end", "a", "z", count, into="n"),
        ],
    )  # fmt: skip


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    run_id=st.builds(
        str.__add__, st.sampled_from("ar09"), st.text(alphabet="ar09._:@-", max_size=12)
    ),
    prefixes=st.lists(
        st.builds(str.__add__, st.sampled_from("tx"), st.text(alphabet="tx09", max_size=5)),
        min_size=2, max_size=2, unique=True,
    ),
)  # fmt: skip
def test_no_two_runs_anywhere_share_a_key(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory, run_id: str,
    prefixes: list[str],
) -> None:  # fmt: skip
    """One run id in two tenants of one Redis, in two embedded files, and again after the first
    run was deleted: every key of every run (tries seen by the steps, and committed) is its own."""
    folder = tmp_path_factory.mktemp("keys")
    example = folder.name  # unique per example: earlier examples' runs are elsewhere

    async def go() -> list[set[str]]:
        stores: list[Store] = [
            *(RedisStore.from_url(f"{redis_server.url}?prefix={p}{example}") for p in prefixes),
            EmbeddedStore(folder / "one.db"),
            EmbeddedStore(folder / "two.db"),
        ]
        runs: list[set[str]] = []
        for i, store in enumerate(stores):
            for again in range(2 if i == 2 else 1):  # the same id again after a delete
                seen: list[str] = []
                agent = looping("loop", seen)
                run = await agent.start(store, Loop(), run_id=run_id)
                await run.until_done()
                keys = {e.key for e in await run.history()} | set(seen)
                runs.append(keys)
                assert len(seen) == len(set(seen)) == 3  # each visit of "a" a new key
                if again == 0 and i == 2:
                    assert isinstance(store, EmbeddedStore)
                    store.connection.execute("UPDATE runs SET expires_at = 0")
                    assert await store.gc(time.time()) == 1
            await store.close()
        return runs

    runs = asyncio.run(go())
    for i, mine in enumerate(runs):
        for theirs in runs[i + 1 :]:
            assert not mine & theirs


class Scratch(BaseModel):
    scratch: list[str] = []
    result: str = ""
    other: str = ""


async def test_a_try_abandoned_on_its_timeout_changes_nothing_committed(store: Store) -> None:
    returned = threading.Event()
    retried = threading.Event()

    def slow(m: Scratch, ctx: StepContext) -> str:
        if ctx.attempt == 1:
            m.scratch.append("written by the abandoned try")  # in place, on its own copy
            # Past the timeout: this try is abandoned and its thread goes on, until the next
            # try has started (a condition, not a time).
            assert retried.wait(60), "the timed-out try was never retried"
            m.scratch.append("and again, late")
            returned.set()
            return "late result"
        retried.set()
        return "in time"

    def after(m: Scratch) -> str:
        assert returned.wait(30), "the abandoned try never returned"
        return "next step"

    agent = Agent(
        name="abandon", memory=Scratch, initial="a", final=["c"],
        transitions=[
            tool("slow", "a", "b", slow, into="result", timeout=1.0, retries=3),
            tool("after", "b", "c", after, into="other"),
        ],
    )  # fmt: skip
    run = await agent.start(store, Scratch(), run_id="abandoned")
    await run.until_done()
    assert (run.status, run.memory.scratch, run.memory.result) == ("done", [], "in time")
    history = await run.history()
    assert all("scratch" not in e.patch for e in history[1:])
    assert "abandoned" not in str([e.patch for e in history])
    assert (await run.why("result")).last.trigger == "slow"
    assert (await run.why("other")).last.trigger == "after"
    assert (await run.why("scratch")).last.trigger == "start"


class Anything(BaseModel):
    value: Any = None


@pytest.mark.parametrize(
    ("bad", "named"), [(object(), "object"), (b"\xff", "bytes")], ids=["object", "bytes"]
)
async def test_a_result_that_cannot_be_stored_is_a_recorded_failed_try(
    store: Store, bad: object, named: str
) -> None:
    calls: list[int] = []

    def produce(m: Anything, ctx: StepContext) -> object:
        calls.append(ctx.attempt)
        return bad

    agent = Agent(
        name="unstorable", memory=Anything, initial="a", final=["b"], on_error="failed",
        transitions=[tool("produce", "a", "b", produce, into="value", retries=2, backoff=0.01)],
    )  # fmt: skip
    run = await agent.start(store, Anything(), run_id=f"bad-{named}")
    await run.until_done()
    assert (run.status, run.state) == ("failed", "failed")
    assert calls == [1, 2, 3]  # retries + 1 tries, then no more
    errors = [e for e in await run.history() if e.kind == "error"]
    assert len(errors) == 1 and errors[0].error is not None
    assert errors[0].error["type"] == "UnstorableResult"
    message = str(errors[0].error["message"])
    assert "step 'produce' returned what cannot be stored as JSON in memory field 'value'" in (
        message
    )
    assert named in message
    resumed = await agent.resume(store, run.run_id)
    await resumed.until_done()
    assert calls == [1, 2, 3]  # a resume does not run the side effect again
