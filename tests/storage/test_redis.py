"""What is specific to RedisStore: one EVALSHA per commit, key layout, reconnects, clear errors."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from redis.crc import key_slot

from agents import Agent, Budget
from agents.spending._budget import period_of
from storage import Committed, Lease, RedisStore, RunRecord, open_store
from storage.base import ScopeCharge
from storage.errors import StoreUnavailable
from storage.redis import redact

from ..redis_cluster import RedisCluster
from ..redis_server import RedisServer, free_port
from .conformance.test_runs import event, new_run
from .roundtrips import count_round_trips


async def test_every_key_of_a_run_is_in_one_cluster_slot(redis_store: RedisStore) -> None:
    await redis_store.create(new_run("slot-test"))
    lease = await redis_store.acquire_lease("slot-test", "w1", 10)
    assert isinstance(lease, Lease)
    await redis_store.commit("slot-test", expected_seq=0, token=lease.token, event=event(1, n=1))
    keys = [str(k) for k in await redis_store.client.keys(f"{redis_store.prefix}:{{slot-test}}:*")]
    assert sorted(k.rsplit(":", 1)[1] for k in keys) == ["events", "keys", "lease", "run"]
    assert len({key_slot(k.encode()) for k in keys}) == 1


async def test_a_commit_is_one_evalsha(redis_server: RedisServer) -> None:
    store = RedisStore.from_url(redis_server.url, prefix="one-evalsha")
    sent: list[str] = []
    wire = count_round_trips(store, sent)
    try:
        await store.create(new_run())
        lease = await store.acquire_lease("run-1", "w1", 10)
        assert isinstance(lease, Lease)
        await store.commit("run-1", expected_seq=0, token=lease.token, event=event(1, n=1))
        wire.take()  # the first may have loaded the script
        sent.clear()
        await store.commit("run-1", expected_seq=1, token=lease.token, event=event(2, n=2))
        assert (wire.round_trips, wire.commands, sent) == (1, 1, ["EVALSHA"])
    finally:
        await store.close()


async def test_the_commit_script_survives_a_script_cache_flush(redis_store: RedisStore) -> None:
    await redis_store.create(new_run())
    lease = await redis_store.acquire_lease("run-1", "w1", 10)
    assert isinstance(lease, Lease)
    await redis_store.client.script_flush()
    out = await redis_store.commit("run-1", expected_seq=0, token=lease.token, event=event(1))
    assert out == Committed(seq=1)


async def test_unreachable_redis_is_a_clear_error_without_the_password() -> None:
    url = f"redis://user:s3cret@127.0.0.1:{free_port()}/0"
    store = RedisStore.from_url(url, retries=1)
    with pytest.raises(StoreUnavailable) as caught:
        await store.load("anything")
    message = str(caught.value)
    assert "s3cret" not in message and "user:***@127.0.0.1" in message
    assert "cannot reach Redis" in message and "load run 'anything'" in message
    await store.close()


def test_redact_hides_only_the_password() -> None:
    assert redact("redis://:pw@h:1/0") == "redis://:***@h:1/0"
    assert redact("rediss://u:pw@h:1/0") == "rediss://u:***@h:1/0"
    assert redact("redis://h:1/0") == "redis://h:1/0"


def test_open_store_refuses_an_unknown_scheme_without_leaking_the_password() -> None:
    with pytest.raises(ValueError, match=r"unknown store URL 'mysql://u:\*\*\*@h/db'"):
        open_store("mysql://u:pw@h/db")


async def test_commits_survive_a_redis_kill_and_the_store_reconnects(
    redis_factory: Callable[..., RedisServer],
) -> None:
    server = redis_factory(appendfsync="always").start()
    store = RedisStore.from_url(server.url)
    t = time.time()
    run = RunRecord(
        run_id="durable", agent="a", version=1, state="a", seq=0, status="running",
        memory={"n": 0}, created_at=t, updated_at=t,
    )  # fmt: skip
    await store.create(run)
    lease = await store.acquire_lease("durable", "w1", 30)
    assert isinstance(lease, Lease)
    for seq in (1, 2, 3):
        ev = event(seq, key=f"durable:{seq - 1}:go", n=seq)
        assert await store.commit("durable", expected_seq=seq - 1, token=lease.token, event=ev)
    server.kill()
    server.start()  # same port, same AOF
    loaded = await store.load("durable")  # the client reconnects by itself
    assert loaded is not None and (loaded.seq, loaded.memory) == (3, {"n": 3})
    ev = event(4, key="durable:3:go", n=4)
    assert await store.commit("durable", expected_seq=3, token=lease.token, event=ev) == Committed(
        seq=4
    )
    await store.close()


async def test_the_deadlines_index_heals_what_a_crash_left_behind(
    redis_store: RedisStore,
) -> None:
    """The index is written beside the commit script (one slot per run in a Cluster), so a
    process may die between the two: `due` checks each entry against its run."""
    client, index = redis_store.client, f"{redis_store.prefix}:deadlines"
    t = time.time()
    await redis_store.create(new_run("gone-waiting"))  # no deadline: an entry left by a crash
    await redis_store.create(new_run("moved"))
    await client.hset(redis_store.key("moved", "run"), "deadline", repr(t + 600))
    await client.zadd(index, {"gone-waiting": t - 5, "moved": t - 4, "no-such-run": t - 3})
    assert await redis_store.due(t) == []
    assert await client.zrange(index, 0, -1, withscores=True) == [("moved", t + 600)]


async def test_the_connections_held_for_commits_leave_the_pool_enough(
    redis_server: RedisServer,
) -> None:
    """Commits keep their connections (no pool checkout per commit), a quarter of the pool
    at most when idle: 8 commits at once on a pool of 8 leave 2 kept, and other commands
    still get connections."""
    store = RedisStore.from_url(f"{redis_server.url}?max_connections=8", prefix="held")
    try:
        ids = [f"h{i}" for i in range(8)]
        leases = []
        for run_id in ids:
            _, lease = await store.start(new_run(run_id), owner="w1", ttl=10)
            assert isinstance(lease, Lease)
            leases.append(lease)
        outcomes = await asyncio.gather(
            *(
                store.commit(r, expected_seq=0, token=lease.token, event=event(1))
                for r, lease in zip(ids, leases, strict=True)
            )
        )
        assert outcomes == [Committed(seq=1)] * 8
        held = store._on_this_loop().held
        assert held is not None and 1 <= len(held._idle) <= 2
        assert [r.seq for r in await asyncio.gather(*map(store.load, ids)) if r] == [1] * 8
    finally:
        await store.close()


async def test_start_and_the_last_commit_on_a_redis_cluster(redis_cluster: RedisCluster) -> None:
    """On Cluster the indexes are in other slots: the scripts get only the run's keys, and the
    indexes are kept beside them; the lease is still taken by the start and given back by
    the last commit."""
    store = open_store(f"redis+cluster://127.0.0.1:{redis_cluster.ports[0]}?prefix=clstart")
    assert isinstance(store, RedisStore)
    try:
        run, lease = await store.start(new_run("c1"), owner="w1", ttl=10)
        assert isinstance(lease, Lease) and run.holder == "w1"
        assert [r.run_id for r in await store.list_runs(status="running")] == ["c1"]
        done = dataclasses.replace(event(1), status="done")
        assert await store.commit("c1", expected_seq=0, token=lease.token, event=done)
        stored = await store.load("c1")
        assert stored is not None and (stored.holder, stored.status) == ("", "done")
        assert [r.run_id for r in await store.list_runs(status="done")] == ["c1"]
        assert await store.list_runs(status="running") == []
        again = await store.acquire_lease("c1", "w2", 10)
        assert isinstance(again, Lease) and again.crashes == 0
    finally:
        await store.close()


async def test_on_a_redis_cluster_the_commit_charges_the_scope_once(
    redis_cluster: RedisCluster, tmp_path: Path
) -> None:
    """The scope's keys are in another slot than the run's: the commit keeps the charge in
    the run's slot, and the store makes it right after, once per event key."""
    from ..integration.cost_agent import Chat, offline_model, steps

    store = open_store(f"redis+cluster://127.0.0.1:{redis_cluster.ports[0]}?prefix=clscope")
    assert isinstance(store, RedisStore) and not store.standalone
    agent = Agent(
        name="cl_scoped", memory=Chat, model=offline_model(tmp_path, False),
        initial="new", final=["done"], scope_budget=Budget(requests=50, per="day"),
        budget_scope=lambda m: m.tenant, transitions=steps(2),
    )  # fmt: skip
    try:
        run = await agent.start(store, Chat(tenant="acme"))
        await run.until_done()
        period = period_of("day", time.time())
        assert await store.ledger.scope_usage("acme", period) == run.record.usage
        assert run.record.usage["requests"] == 2
        await store.create(new_run("c2"))
        lease = await store.acquire_lease("c2", "w1", 10)
        assert isinstance(lease, Lease)
        charged = dataclasses.replace(event(1), usage={"requests": 1})
        outcome = await store.commit(
            "c2", expected_seq=0, token=lease.token, event=charged,
            scope_charge=ScopeCharge(scope="acme", period=period),
        )  # fmt: skip
        assert isinstance(outcome, Committed)
        assert (await store.ledger.scope_usage("acme", period))["requests"] == 3
        assert not await store.client.exists(store.key("c2", "charges"))
    finally:
        await store.close()
