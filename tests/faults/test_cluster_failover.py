"""A worker fleet on a `redis+cluster://` store rides through a Cluster failover: the master
serving the runs stops answering (SIGSTOP; SIGKILLed at the end), its replica takes over its
slots, and every run ends done with one event per step (`CLUSTERDOWN` while no node serves
the slots, and timeouts, are retried within `retry_for`; MOVED is redis-py's own)."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator

import pytest
import redis

from statemachine import Worker
from storage import RedisStore, open_store

from ..replication import ReplicatedCluster, assert_all_done, seqs_reach, until
from ..workers.work_agent import STEPS, Chain, chain

pytestmark = pytest.mark.redis


@pytest.fixture
def cluster() -> Iterator[ReplicatedCluster]:
    started = ReplicatedCluster().start()
    yield started
    started.stop()


def ids_on_first_master(cluster: ReplicatedCluster, prefix: str, count: int) -> list[str]:
    ranges = cluster.first_masters_slots()
    found: list[str] = []
    with redis.Redis(port=cluster.ports[1], decode_responses=True) as r:
        for i in range(1000):
            slot = int(r.execute_command("CLUSTER", "KEYSLOT", f"{prefix}:{{c{i}}}:run"))
            if any(low <= slot <= high for low, high in ranges):
                found.append(f"c{i}")
            if len(found) == count:
                return found
    raise AssertionError("no run ids hash to the first master")


async def test_a_worker_fleet_rides_through_a_cluster_failover(
    cluster: ReplicatedCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"redis+cluster://127.0.0.1:{cluster.ports[1]}?retry_for=30&retries=1000&prefix=cf"
    store = open_store(url)
    assert isinstance(store, RedisStore)
    monkeypatch.setenv("AGENTFSM_STEP_SLEEP", "0.05")
    ids = ids_on_first_master(cluster, "cf", 4)
    for run_id in ids:
        await chain.submit(store, Chain(), run_id=run_id)
    workers = [Worker(store, [chain], concurrency=2, heartbeat=0.5) for _ in range(2)]
    tasks = [asyncio.create_task(w.run()) for w in workers]
    first = cluster.procs[cluster.ports[0]]
    try:
        await seqs_reach(store, ids, lambda seqs: sum(seqs) >= 2, "a run got going", 60)
        with redis.Redis(port=cluster.ports[0], socket_timeout=70) as r:  # the replica has them
            assert r.execute_command("WAIT", 1, 60_000) == 1
        os.kill(first.pid, signal.SIGSTOP)  # its port stays taken: no other server gets it
        await seqs_reach(store, ids, lambda seqs: seqs == [STEPS] * len(ids), "all done", 120)
        until(lambda: cluster.role(cluster.replica) == "master", "the replica took over")
        await assert_all_done(store, ids, STEPS)
    finally:
        for worker in workers:
            worker.stop()
        await asyncio.gather(*tasks, return_exceptions=True)
        await store.close()
        first.kill()  # stopped still: it never wakes as a second master
        first.wait()
