"""Redis dies under load: SIGKILL and restart the server (same port, same directory, AOF with
`appendfsync always`) while 20 runs of 10 tool steps are being driven, three times.

The runners' store reconnects with backoff (`RedisStore.from_url`); a run whose driver still
sees an error (retries used up) is resumed. At the end every run is done, every commit the
server acknowledged is there, even after one more SIGKILL, and no side effect ran twice except
a step whose driver had to be resumed.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from pathlib import Path

import pytest

from statemachine import RunError, StepContext
from storage import StorageError

from ..keys import plain
from ..redis_server import RedisServer
from .fault_agent import CountingStore, Progress, make_agent

pytestmark = pytest.mark.redis

RUNS = 20
STEPS = 10
KILLS = 3
LEASE_TTL = 3.0


def kill_and_restart(server: RedisServer, done: asyncio.Event, seed: int) -> list[float]:
    """SIGKILL the server `KILLS` times while runs go on; returns each outage's length (s)."""
    rng = random.Random(seed)
    outages = []
    for _ in range(KILLS):
        time.sleep(rng.uniform(0.3, 0.6))
        if done.is_set():
            break
        began = time.monotonic()
        server.kill()
        time.sleep(0.05)
        server.start()
        outages.append(time.monotonic() - began)
    return outages


@pytest.mark.parametrize("seed", [7])
async def test_runs_survive_redis_restarts(
    redis_factory: type[RedisServer], tmp_path: Path, seed: int
) -> None:
    server = redis_factory(tmp_path / "aof", appendfsync="always").start()
    effects: Counter[str] = Counter()

    def effect(ctx: StepContext) -> None:
        effects[plain(ctx.idempotency_key)] += 1

    agent = make_agent(STEPS, LEASE_TTL, effect, delay=(0.04, 0.12))
    store = CountingStore.connect(server.url, prefix="restart")
    escaped: Counter[str] = Counter()
    """Errors that reached a run's driver (the store's own retries were not enough)."""
    rng = random.Random(seed)

    async def drive(run_id: str, delay: float) -> None:
        await asyncio.sleep(delay)
        for _ in range(20):
            try:
                run = await agent.start(store, Progress(), run_id=run_id)
                await run.until_done()
                if run.status == "done":
                    return
            except (StorageError, RunError) as exc:
                escaped[type(exc).__name__] += 1
                await asyncio.sleep(0.2)
        raise AssertionError(f"run {run_id} never finished")

    all_done = asyncio.Event()
    killer = asyncio.create_task(asyncio.to_thread(kill_and_restart, server, all_done, seed))
    started = time.monotonic()
    try:
        await asyncio.gather(*(drive(f"r{i}", rng.uniform(0, 1.5)) for i in range(RUNS)))
        all_done.set()
        outages = await killer
        elapsed = time.monotonic() - started
        assert len(outages) == KILLS, "the runs finished before all the kills"

        # One more SIGKILL with everything finished: acknowledged means on disk.
        server.kill()
        server.start()
        escapes = sum(escaped.values())
        for i in range(RUNS):
            run_id = f"r{i}"
            record = await store.load(run_id)
            assert record is not None
            assert (record.status, record.seq) == ("done", STEPS)
            assert record.memory["done"] == [f"t{n}" for n in range(STEPS)]
            history = await store.history(run_id)
            assert [e.seq for e in history] == list(range(STEPS + 1))
            assert [plain(e.key) for e in history[1:]] == [
                f"{run_id}:{n}:t{n}" for n in range(STEPS)
            ]
        listed = {r.run_id for r in await store.list_runs(limit=1000)}
        assert listed == {f"r{i}" for i in range(RUNS)}
    finally:
        all_done.set()
        if not killer.done():
            await killer
        await store.close()

    committed = {f"r{i}:{n}:t{n}" for i in range(RUNS) for n in range(STEPS)}
    acknowledged = {plain(key) for key in store.acknowledged}
    assert acknowledged <= committed
    assert acknowledged == committed  # every step's commit was acknowledged to its runner
    assert set(effects) == committed
    extra = sum(n - 1 for n in effects.values())
    # A step runs again only when its driver was resumed after an error reached it.
    assert extra <= escapes
    print(
        f"\nredis restarts: {KILLS} kills (outages {[round(o, 3) for o in outages]} s),"
        f" {RUNS * STEPS} commits in {elapsed:.1f} s, outcomes {dict(store.outcomes)},"
        f" errors that reached a driver {dict(escaped)}, side effects run twice {extra}"
    )
