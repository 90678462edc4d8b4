"""Worker processes (`agentfsm worker`) sharing one Redis (or one embedded store file): a
SIGKILLed worker's runs are finished by another with no transition committed twice; 100 runs
through 2 workers on a 3-master Redis Cluster, each exactly once; SIGTERM stops a worker
cleanly."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from storage import RedisStore, Store, open_store

from ..keys import plain
from ..redis_cluster import RedisCluster
from ..redis_server import RedisServer
from .work_agent import STEPS, Chain, chain

ROOT = Path(__file__).resolve().parents[2]


def worker(url: str, effects: Path, name: str, sleep: float) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "AGENTFSM_EFFECTS": str(effects),
           "AGENTFSM_STEP_SLEEP": str(sleep)}  # fmt: skip
    return subprocess.Popen(
        [sys.executable, "-m", "agents", "worker", "--agents", "tests.workers.work_agent:chain",
         "--store", url, "--name", name, "--heartbeat", "0.5", "--reclaim-after", "1.5",
         "--concurrency", "50"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


async def wait_for(store: Store, ids: list[str], test: str, within: float) -> None:
    give_up = time.monotonic() + within
    while True:
        records = [await store.load(i) for i in ids]
        if test == "done" and all(r is not None and r.status == "done" for r in records):
            return
        if test == "started" and sum(r is not None and r.seq >= 1 for r in records) >= 5:
            return
        assert time.monotonic() < give_up, f"runs not {test} in {within} s: {records}"
        await asyncio.sleep(0.05)


async def wait_for_holder(store: Store, ids: list[str], prefix: str, within: float) -> None:
    """Until a worker whose owner ids start with `prefix` holds one of the runs: it is up,
    its signal handlers are installed (before it claims), and a step is in flight."""
    give_up = time.monotonic() + within
    while not any(
        r is not None and r.holder.startswith(prefix) for r in [await store.load(i) for i in ids]
    ):
        assert time.monotonic() < give_up, f"no run held by {prefix}... in {within} s"
        await asyncio.sleep(0.02)


async def check_each_step_committed_once(store: Store, ids: list[str]) -> None:
    """Every run done with a gap-free history: each step committed once, in order."""
    for run_id in ids:
        history = await store.history(run_id)
        assert [e.seq for e in history] == list(range(STEPS + 1)), run_id
        assert [plain(e.key) for e in history[1:]] == [f"{run_id}:{i}:t{i}" for i in range(STEPS)]


STOPPING = "stopping: finishing the steps in flight"


def read_until(proc: subprocess.Popen[str], words: str, stream: str = "err") -> str:
    """The worker's stderr (or stdout) up to the line that holds `words` (or to its end)."""
    pipe = proc.stderr if stream == "err" else proc.stdout
    assert pipe is not None
    lines = []
    for line in pipe:
        lines.append(line)
        if words in line:
            break
    return "".join(lines)


def executions(effects: Path) -> Counter[str]:
    return Counter(plain(line.split("\t")[0]) for line in effects.read_text().splitlines())


@pytest.mark.parametrize("kind", ["redis", "embedded"])
async def test_a_killed_workers_runs_are_finished_by_another_with_nothing_committed_twice(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """On Redis, and on one embedded store file shared by the worker processes (its queue is a
    table): the same guarantees."""
    if kind == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        url = f"{server.url}?prefix=killed"
    else:
        url = f"sqlite:///{tmp_path / 'store.db'}"
    store = open_store(url)
    ids = [await chain.submit(store, Chain(), run_id=f"k{i}") for i in range(20)]
    effects = tmp_path / "effects.log"
    doomed = worker(url, effects, "doomed", sleep=0.3)
    try:
        await wait_for(store, ids, "started", within=20)
        doomed.send_signal(signal.SIGKILL)
        doomed.communicate()
        held = [r.run_id for i in ids if (r := await store.load(i)) and r.holder]
        assert held, "the killed worker held runs"
        survivor = worker(url, effects, "survivor", sleep=0.01)
        try:
            await wait_for(store, ids, "done", within=30)
        finally:
            survivor.send_signal(signal.SIGTERM)
            _, err = survivor.communicate(timeout=20)
        assert survivor.returncode == 0, err[-2000:]
    finally:
        if doomed.poll() is None:
            doomed.kill()
    await check_each_step_committed_once(store, ids)
    ran = executions(effects)
    committed = {f"{i}:{n}:t{n}" for i in ids for n in range(STEPS)}
    assert set(ran) == committed  # nothing ran past a commit it did not make
    repeated = {k: n for k, n in ran.items() if n > 1}
    assert len(repeated) <= len(held)  # at most the step each held run was in at the kill
    assert all(n == 2 for n in repeated.values())
    for run_id in held:  # the survivor finished what the dead worker held
        last = (await store.history(run_id))[-1]
        assert last.worker.startswith("survivor/")  # the worker named itself so
    await store.close()


async def test_two_workers_on_a_redis_cluster_finish_100_runs_exactly_once(
    redis_cluster: RedisCluster, tmp_path: Path
) -> None:
    url = f"redis+cluster://127.0.0.1:{redis_cluster.ports[0]}?prefix=cl"
    store = open_store(url)
    assert isinstance(store, RedisStore)
    effects = tmp_path / "effects.log"
    workers = [worker(url, effects, f"w{n}", sleep=0.01) for n in range(2)]
    try:
        for w in workers:  # both up before the runs come: else one may do them all
            said = await asyncio.wait_for(asyncio.to_thread(read_until, w, "serving", "out"), 60)
            assert "serving" in said, said[-2000:]
        ids = [await chain.submit(store, Chain(), run_id=f"r{i}") for i in range(100)]
        await wait_for(store, ids, "done", within=60)
    finally:
        for w in workers:
            w.send_signal(signal.SIGTERM)
        results = [w.communicate(timeout=20) for w in workers]
    for w, (out, err) in zip(workers, results, strict=True):
        assert w.returncode == 0, err[-2000:]
        assert "stopped after" in out
    await check_each_step_committed_once(store, ids)
    ran = executions(effects)
    assert len(ran) == 100 * STEPS and set(ran.values()) == {1}  # no kills: each step once
    by_worker = Counter(line.split("\t")[1] for line in effects.read_text().splitlines())
    assert len(by_worker) == 2  # both did work
    slots = {await store.client.cluster_keyslot(store.key(i, "run")) for i in ids[:20]}
    assert len(slots) > 1  # the runs are spread over the cluster
    await store.close()


async def test_sigterm_hands_runs_back_and_a_second_signal_exits_at_once(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    url = f"{redis_server.url}?prefix=term"
    store = RedisStore.from_url(url)
    ids = [await chain.submit(store, Chain(), run_id=f"t{i}") for i in range(6)]
    effects = tmp_path / "effects.log"

    graceful = worker(url, effects, "graceful", sleep=0.4)
    await wait_for(store, ids, "started", within=20)
    graceful.send_signal(signal.SIGTERM)
    out, err = graceful.communicate(timeout=20)
    assert graceful.returncode == 0, err[-2000:]
    assert STOPPING in err and "stopped after" in out
    records = [await store.load(i) for i in ids]
    assert all(r is not None and r.holder == "" for r in records)  # released, none left held
    unfinished = [r.run_id for r in records if r is not None and r.status == "running"]
    assert unfinished
    queue: Any = store.queue
    assert (await queue.waiting(["chain"]))["chain"] >= len(unfinished)  # handed back

    hasty = worker(url, effects, "hasty", sleep=0.4)
    await wait_for_holder(store, ids, "hasty/", within=30)  # it handles signals and is busy
    hasty.send_signal(signal.SIGTERM)
    # The second signal once the first was handled (two pending SIGTERMs would be one).
    said = await asyncio.wait_for(asyncio.to_thread(read_until, hasty, STOPPING), 60)
    assert STOPPING in said, said[-2000:]
    hasty.send_signal(signal.SIGTERM)
    _, err = hasty.communicate(timeout=20)
    err = said + err
    assert hasty.returncode == 128 + signal.SIGTERM and "exiting at once" in err

    finisher = worker(url, effects, "finisher", sleep=0.01)
    try:
        await wait_for(store, ids, "done", within=30)
    finally:
        finisher.send_signal(signal.SIGTERM)
        finisher.communicate(timeout=20)
    await check_each_step_committed_once(store, ids)
    await store.close()
