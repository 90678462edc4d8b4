"""`Worker` in-process, on a real redis-server: claims queued runs, drives many at once,
delivers events, fires timeouts, hands runs back when stopped."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from statemachine import RunNotFound, Worker
from statemachine.errors import InvalidPayload
from storage import EmbeddedStore, RedisStore

from ..redis_server import RedisServer
from .work_agent import STEPS, Chain, chain, inbox


@pytest_asyncio.fixture
async def store(redis_server: RedisServer, prefix: str) -> AsyncIterator[RedisStore]:
    s = RedisStore.from_url(redis_server.url, prefix=prefix)
    yield s
    await s.close()


async def until(
    condition: Callable[[], Awaitable[bool]],
    within: float = 60.0,
    show: Callable[[], Awaitable[object]] | None = None,
) -> None:
    """Poll `condition` (a store read) until it holds; fail after `within` seconds, saying
    what `show` reads then."""
    give_up = time.monotonic() + within
    while not await condition():
        if time.monotonic() >= give_up:
            seen = await show() if show is not None else None
            raise AssertionError(f"the workers did not get there in {within} s: {seen}")
        await asyncio.sleep(0.02)


async def statuses(store: RedisStore, ids: list[str]) -> list[str]:
    return [r.status if (r := await store.load(i)) else "missing" for i in ids]


async def test_a_worker_drives_many_queued_runs_at_once_each_exactly_once(
    store: RedisStore, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    effects = tmp_path / "effects.log"
    monkeypatch.setenv("AGENTFSM_EFFECTS", str(effects))
    monkeypatch.setenv("AGENTFSM_STEP_SLEEP", "0.05")
    ids = [await chain.submit(store, Chain(), run_id=f"c{i}") for i in range(40)]
    await chain.submit(store, Chain(), run_id="c0")  # submitted twice: carried out once
    worker = Worker(store, [chain], concurrency=40, heartbeat=0.5)
    task = asyncio.create_task(worker.run())
    peak = 0

    async def all_done() -> bool:
        nonlocal peak
        peak = max(peak, len(worker.holding))
        return await statuses(store, ids) == ["done"] * len(ids)

    await until(all_done)
    worker.stop()
    await task
    assert peak >= 20  # driven side by side, not one after another
    lines = effects.read_text().splitlines()
    keys = [line.split("\t")[0] for line in lines]
    assert len(keys) == len(set(keys)) == 40 * STEPS  # every step once
    for run_id in ids:
        history = await store.history(run_id)
        assert [e.seq for e in history] == list(range(STEPS + 1))
    queue: Any = store.queue
    assert await queue.waiting(["chain"]) == {"chain": 0}
    assert await queue.pending(["chain"]) == {"chain": 0}
    assert await queue.workers() == []  # signed off


async def test_events_are_delivered_and_due_timeouts_fired_by_workers(store: RedisStore) -> None:
    await inbox.submit(store, {}, run_id="answered")
    await inbox.submit(store, {}, run_id="ignored")
    worker = Worker(store, [inbox], heartbeat=0.5, poll=0.1)
    task = asyncio.create_task(worker.run())
    await until(lambda: _status_is(store, "answered", "waiting"))
    with pytest.raises(InvalidPayload):
        await inbox.deliver(store, "answered", "reply", {"not": "a string"})
    await inbox.deliver(store, "answered", "reply", "thanks")
    await until(lambda: _status_is(store, "answered", "done"))
    await until(lambda: _status_is(store, "ignored", "done"))
    worker.stop()
    await task
    answered, ignored = await store.load("answered"), await store.load("ignored")
    assert answered is not None and answered.memory == {"reply": "thanks", "late": False}
    assert ignored is not None and ignored.memory == {"reply": "", "late": True}
    kinds = [e.kind for e in await store.history("ignored")]
    assert kinds.count("timeout") == 1


async def _status_is(store: RedisStore, run_id: str, status: str) -> bool:
    record = await store.load(run_id)
    return record is not None and record.status == status


async def test_a_stopped_worker_hands_its_runs_back_and_another_finishes_them(
    store: RedisStore, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    effects = tmp_path / "effects.log"
    monkeypatch.setenv("AGENTFSM_EFFECTS", str(effects))
    monkeypatch.setenv("AGENTFSM_STEP_SLEEP", "0.1")
    ids = [await chain.submit(store, Chain(), run_id=f"h{i}") for i in range(4)]
    first = Worker(store, [chain], name="first", heartbeat=0.5)
    task = asyncio.create_task(first.run())
    await until(lambda: _any_step(store, ids))
    first.stop()
    await task
    records = {i: await store.load(i) for i in ids}
    held = [i for i, rec in records.items() if rec is not None and rec.status == "running"]
    assert held, f"stopped in the middle of the runs: {records}"
    for run_id in held:
        record = await store.load(run_id)
        assert record is not None and record.holder == "", record  # released, not left to expire
    second = Worker(store, [chain], name="second", heartbeat=0.5)
    task = asyncio.create_task(second.run())

    async def progress() -> object:
        queue: Any = store.queue
        runs = [(r.run_id, r.status, r.seq, r.holder) for i in ids if (r := await store.load(i))]
        dead = await store.client.xrange(queue.dead_letters)
        return runs, await queue.waiting(["chain"]), await queue.pending(["chain"]), dead

    # No waiting for leases or reclaims: the runs were released and handed back.
    await until(lambda: _all_done(store, ids), within=60, show=progress)
    second.stop()
    await task
    keys = [line.split("\t")[0] for line in effects.read_text().splitlines()]
    assert len(keys) == len(set(keys)) == 4 * STEPS, sorted(keys)


async def _any_step(store: RedisStore, ids: list[str]) -> bool:
    records = [await store.load(i) for i in ids]
    return any(r is not None and r.seq >= 1 for r in records)


async def _all_done(store: RedisStore, ids: list[str]) -> bool:
    return await statuses(store, ids) == ["done"] * len(ids)


async def test_jobs_that_cannot_be_carried_out_are_parked_with_the_reason(
    store: RedisStore,
) -> None:
    queue: Any = store.queue
    await queue.enqueue("chain", "never-created")
    worker = Worker(store, [chain], heartbeat=0.5)
    task = asyncio.create_task(worker.run())

    async def parked() -> bool:
        return bool(await store.client.xlen(queue.dead_letters))

    await until(parked)
    worker.stop()
    await task
    entries: Any = await store.client.xrange(queue.dead_letters)
    [(_, fields)] = entries
    assert fields["run"] == "never-created" and "no run 'never-created'" in fields["reason"]


async def test_workers_drive_queued_runs_on_the_embedded_store_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGENTFSM_EFFECTS", str(tmp_path / "effects.log"))
    embedded = EmbeddedStore(tmp_path / "store.db")
    ids = [await chain.submit(embedded, Chain(), run_id=f"e{i}") for i in range(5)]
    worker = Worker(embedded, [chain], concurrency=5, heartbeat=0.2)
    task = asyncio.create_task(worker.run())

    async def all_done() -> bool:
        return [r.status if (r := await embedded.load(i)) else "" for i in ids] == ["done"] * 5

    await until(all_done)
    worker.stop()
    await task
    assert await embedded.queue.waiting(["chain"]) == {"chain": 0}
    assert await embedded.queue.pending(["chain"]) == {"chain": 0}
    await embedded.close()


async def test_bad_setups_are_refused_with_a_clear_error(store: RedisStore) -> None:
    with pytest.raises(ValueError, match="concurrency must be at least 1"):
        Worker(store, [chain], concurrency=0)
    with pytest.raises(RunNotFound):
        await chain.enqueue(store, "ghost")
