"""Crash storm: a pool of `agentfsm worker` processes drives hundreds of runs while a chaos
loop SIGKILLs random workers at random moments and starts fresh ones.

The agent is `tests.faults.storm_agent:storm` (tool and offline-LLM steps; each applies one
side effect to db 1 of the test's redis-server, deduplicated by its idempotency key). At the
end every run must be done with a gap-free history, each transition committed once under its
own key, each side effect applied once, and every re-execution must be the step a killed
worker was in, absorbed by the key. CI size: 100 runs, 8 kills; `pytest tests/faults --full` (or
AGENTFSM_FULL=1): 3000 runs and many more kills, for the figures in docs/reliability.md.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from storage import RedisStore

from ..keys import plain
from ..redis_server import RedisServer
from .storm_agent import STEPS, TRIGGERS, Storm, storm

pytestmark = pytest.mark.redis

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True, kw_only=True)
class Size:
    runs: int
    workers: int
    """Workers alive at once: each one killed is replaced by a fresh one."""
    concurrency: int
    gap: tuple[float, float]
    """Seconds between kills (uniform)."""
    max_kills: int
    within: float
    """Seconds the runs get to finish."""
    paced: bool = False
    """Also kill as the runs get done (kill k once k/(max_kills + 1) of them are), so the whole
    kill budget lands while runs are in flight, however fast the machine finishes them."""


CI = Size(runs=100, workers=4, concurrency=12, gap=(0.5, 1.5), max_kills=8, within=120, paced=True)
"""Each kill cuts short the steps of the up to 12 runs the worker holds, in every phase (before
a side effect, between it and the commit, tool and LLM steps alike): 8 kills reach each case
many times over, and the test asserts that they did. More runs and kills only repeat them."""
FULL = Size(runs=3000, workers=6, concurrency=20, gap=(0.8, 2.0), max_kills=200, within=900)


@dataclass
class Pool:
    """Worker processes on one store URL; their output goes to files in `logs`."""

    url: str
    env: dict[str, str]
    logs: Path
    concurrency: int
    alive: list[tuple[subprocess.Popen[bytes], Path]] = field(default_factory=list)
    killed: set[int] = field(default_factory=set)
    started: int = 0

    def start(self) -> None:
        self.started += 1
        log = self.logs / f"worker{self.started}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "agents", "worker", "--agents",
                 "tests.faults.storm_agent:storm", "--store", self.url,
                 "--name", f"storm-{self.started}", "--heartbeat", "0.5",
                 "--reclaim-after", "1.5", "--concurrency", str(self.concurrency)],
                cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        self.alive.append((proc, log))

    def signed_on(self) -> list[subprocess.Popen[bytes]]:
        """Workers that got as far as serving (a kill before that would test little)."""
        return [p for p, log in self.alive if p.poll() is None and b"serving" in log.read_bytes()]

    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        self.killed.add(proc.pid)
        self.alive = [(p, log) for p, log in self.alive if p is not proc]

    def stop_all(self) -> list[tuple[int | None, str]]:
        """SIGTERM the live ones (once they serve: before, SIGTERM kills); their exit codes
        and output."""
        give_up = time.monotonic() + 30
        while len(self.signed_on()) < len(self.alive) and time.monotonic() < give_up:
            time.sleep(0.05)
        for p, _ in self.alive:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        results = []
        for p, log in self.alive:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            results.append((p.returncode, log.read_text(errors="replace")))
        return results


async def count_done(store: RedisStore, ids: list[str]) -> int:
    """Runs done; fails at once when one failed (it would never be done)."""
    pipe = store.client.pipeline(transaction=False)
    for run_id in ids:
        pipe.hget(store.key(run_id, "run"), "status")
    statuses = await pipe.execute()
    failed = [i for i, s in zip(ids, statuses, strict=True) if s == "failed"]
    assert not failed, f"runs failed: {failed}: {(await store.history(failed[0]))[-1]}"
    return sum(status == "done" for status in statuses)


def pid_of(owner: str) -> int:
    """The pid in a run owner, `host:pid:random`."""
    return int(owner.rsplit(":", 2)[1])


async def chaos(
    store: RedisStore, ids: list[str], pool: Pool, size: Size, rng: random.Random
) -> tuple[int, float]:
    """Kill a random signed-on worker every `size.gap` seconds (and, with `size.paced`, as
    the runs get done), starting a fresh one each time, until the runs are done or
    `size.max_kills` were killed; then wait for the rest. Returns the kills and the seconds
    until every run was done."""
    began = time.monotonic()
    next_kill = began + rng.uniform(*size.gap)
    while (done := await count_done(store, ids)) < len(ids):
        assert time.monotonic() - began < size.within, (
            f"{len(ids) - done} runs not done in {size.within} s"
        )
        mark = (len(pool.killed) + 1) * len(ids) / (size.max_kills + 1)
        due = time.monotonic() >= next_kill or (size.paced and done >= mark)
        if len(pool.killed) < size.max_kills and due:
            candidates = pool.signed_on()
            if candidates:
                pool.kill(rng.choice(candidates))
                pool.start()
                next_kill = time.monotonic() + rng.uniform(*size.gap)
        await asyncio.sleep(0.05)
    return len(pool.killed), time.monotonic() - began


async def test_crash_storm(
    redis_server: RedisServer, tmp_path: Path, prefix: str, full_size: bool
) -> None:
    size = FULL if full_size else CI
    seed = int(os.environ.get("AGENTFSM_STORM_SEED", str(time.time_ns() % 10**6)))
    rng = random.Random(seed)
    url = f"{redis_server.url}?prefix={prefix}"
    fx = redis_server.url.rsplit("/", 1)[0] + "/1"  # the outside system: db 1, same server
    env = {**os.environ, "PYTHONPATH": str(ROOT), "AGENTFSM_STORM_FX": fx,
           "AGENTFSM_STORM_NS": prefix}  # fmt: skip
    store = RedisStore.from_url(url)
    outside = RedisStore.from_url(fx).client
    ids = [f"s{i}" for i in range(size.runs)]
    for run_id in ids:
        await storm.submit(store, Storm(run_id=run_id), run_id=run_id)
    pool = Pool(url=url, env=env, logs=tmp_path, concurrency=size.concurrency)
    try:
        for _ in range(size.workers):
            pool.start()
        kills, took = await chaos(store, ids, pool, size, rng)
    finally:
        results = pool.stop_all()
    for code, out in results:  # the survivors stop cleanly: no crash loop
        assert code == 0 and "stopped after" in out, out[-3000:]

    # Every transition committed once, in order, under its own key.
    committer: dict[str, int] = {}
    resumed_runs = crashed_attempts = llm_requests = 0
    for run_id in ids:
        record = await store.load(run_id)
        assert record is not None
        assert (record.status, record.state, record.seq) == ("done", f"s{STEPS}", STEPS)
        assert record.memory["done"] == TRIGGERS
        history = await store.history(run_id)
        assert [e.seq for e in history] == list(range(STEPS + 1)), run_id
        steps = history[1:]
        assert [e.key for e in steps] == [
            f"{run_id}:{record.nonce}:{i}:{t}" for i, t in enumerate(TRIGGERS)
        ]
        assert [e.kind for e in steps] == ["tool" if t[0] == "t" else "llm" for t in TRIGGERS]
        assert all(e.error is None for e in steps), run_id
        # A run whose holder was killed goes on in another worker: the step it was in (or
        # the next one) counts the dead holder in its attempt.
        resumed_runs += len({e.worker for e in steps}) > 1 or any(e.attempt > 1 for e in steps)
        for e in steps:
            committer[plain(e.key)] = pid_of(e.worker)
            crashed_attempts += e.attempt - 1
            if e.kind == "llm":
                assert e.usage is not None and e.usage["requests"] == 1, e
                assert len(e.messages) == 2  # one request, one response, committed once
                llm_requests += 1

    # Every side effect applied once; every extra execution was a killed worker's step.
    raw = await outside.hgetall(f"{prefix}:execs")
    # Tools apply under ctx.idempotency_key, LLM steps under a key their prompt spells
    # without the nonce: compare them without it.
    written = {plain(str(k)): str(k) for k in raw}
    execs = {plain(str(k)): int(n) for k, n in raw.items()}
    assert set(execs) == set(committer)  # nothing ran that was not committed, nothing lost
    applied = int(await outside.get(f"{prefix}:applied") or 0)
    absorbed = int(await outside.get(f"{prefix}:absorbed") or 0)
    reexecuted = {k: n for k, n in execs.items() if n > 1}
    assert applied == len(committer) == size.runs * STEPS
    assert absorbed == sum(n - 1 for n in reexecuted.values())
    for key in reexecuted:
        pids = [int(p) for p in await outside.lrange(f"{prefix}:pids:{written[key]}", 0, -1)]
        assert pids[-1] == committer[key], (key, pids)
        assert set(pids[:-1]) <= pool.killed, (key, pids, pool.killed)

    queue: Any = store.queue
    assert await queue.pending(["storm"]) == {"storm": 0}
    assert await queue.waiting(["storm"]) == {"storm": 0}
    assert await store.client.xlen(queue.dead_letters) == 0

    lost = size.runs * STEPS - len(set(execs) & set(committer))
    figures: dict[str, Any] = {
        "size": "full" if full_size else "ci",
        "seed": seed,
        "runs": size.runs,
        "transitions": len(committer),
        "llm requests committed": llm_requests,
        "workers started": pool.started,
        "kills": kills,
        "runs resumed after a kill": resumed_runs,
        "resumes (steps retried after a dead holder)": crashed_attempts,
        "re-executions": sum(n - 1 for n in reexecuted.values()),
        "steps re-executed": len(reexecuted),
        "max executions of one step": max(execs.values()),
        "duplicates absorbed": absorbed,
        "side effects applied": applied,
        "lost": lost,
        "seconds": round(took, 1),
    }
    print("\ncrash storm: " + ", ".join(f"{k} {v}" for k, v in figures.items()))
    assert lost == 0
    # The cases the storm is for happened: workers were killed while they held runs, those
    # runs went on in other workers, and steps cut short between their side effect and their
    # commit ran again with the duplicate absorbed by the key.
    assert kills >= 3 and resumed_runs > 0 and crashed_attempts > 0, figures
    assert absorbed > 0, figures
    by_kind = Counter(t[0] for t in TRIGGERS)
    assert llm_requests == size.runs * by_kind["l"]
    await outside.aclose()
    await store.close()
