"""A worker fleet on a `redis+sentinel://` store rides through a failover: the primary
stops answering (SIGSTOP; SIGKILLed at the end) while runs are being driven, Sentinel
promotes the replica, and every run ends done with one event per step (each new connection
asks Sentinel where the primary is; failover replies, timeouts and resets are retried
within `retry_for`)."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest
import redis

from statemachine import Worker
from storage import RedisStore, open_store

from ..redis_server import RedisServer
from ..replication import FAST_SYNC, Sentinel, assert_all_done, replica_of, seqs_reach, until
from ..workers.work_agent import STEPS, Chain, chain

pytestmark = pytest.mark.redis


async def test_a_worker_fleet_rides_through_a_sentinel_failover(
    redis_factory: type[RedisServer], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    primary = redis_factory(tmp_path / "primary", extra=FAST_SYNC).start()
    replica = replica_of(primary, redis_factory(tmp_path / "replica", extra=FAST_SYNC))
    sentinel = Sentinel(primary.binary, tmp_path / "sentinel", primary, "svc")
    try:
        until(lambda: sentinel.knows_replicas(1), "Sentinel knows the replica")
        # Calls are retried for as long as a failover takes here (the Sentinel sees the
        # primary down after 1 s, then elects, promotes): up to 30 s on a busy machine.
        url = f"redis+sentinel://127.0.0.1:{sentinel.port}/svc?retry_for=30&retries=1000"
        store = open_store(url)
        assert isinstance(store, RedisStore)
        monkeypatch.setenv("AGENTFSM_STEP_SLEEP", "0.05")
        ids = [await chain.submit(store, Chain(), run_id=f"c{i}") for i in range(6)]
        workers = [Worker(store, [chain], concurrency=3, heartbeat=0.5) for _ in range(2)]
        tasks = [asyncio.create_task(w.run()) for w in workers]
    except BaseException:
        sentinel.stop()
        raise
    try:
        await seqs_reach(store, ids, lambda seqs: sum(seqs) >= 3, "a run got going", 60)
        # The replica has the runs (a busy machine's replica may lag; a run whose creation
        # was still on its way is gone with the primary, and nothing could finish it).
        with redis.Redis(port=primary.port, socket_timeout=70) as r:
            assert r.execute_command("WAIT", 1, 60_000) == 1
        # SIGSTOP, not SIGKILL: the primary keeps its port, which another test's server
        # could take once free (the Sentinel would then see "the primary" back, empty).
        assert primary.proc is not None
        os.kill(primary.proc.pid, signal.SIGSTOP)
        await seqs_reach(store, ids, lambda seqs: seqs == [STEPS] * len(ids), "all done", 120)
        assert sentinel.primary_port() == replica.port  # it did fail over
        for worker in workers:
            worker.stop()
        await asyncio.gather(*tasks)
        await assert_all_done(store, ids, STEPS)
    finally:
        for worker in workers:
            worker.stop()
        await asyncio.gather(*tasks, return_exceptions=True)
        await store.close()
        sentinel.stop()
        primary.kill()  # stopped still: it never wakes as a second primary
