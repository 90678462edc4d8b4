"""The `redis_cluster` fixture, and what redis-py's asyncio cluster client can do on it.

Findings (redis-py 8.1, redis-server 7.0, `redis.asyncio.RedisCluster`, decode_responses=True;
the tests assert what `storage` relies on, not what may change between redis-py releases):

- `register_script` works; a script whose keys share a hash tag (`{x}`) runs, and reloads
  itself after SCRIPT FLUSH (NOSCRIPT -> SCRIPT LOAD -> EVALSHA) as on a single server.
- A script whose keys are in different slots never runs: redis-py 8.1 refuses it itself with
  `redis.exceptions.RedisClusterException` ("EVALSHA - all keys must map to the same key
  slot"), which is NOT a `ResponseError`. Only when the client's slot check is bypassed
  (an explicit `target_nodes=`) does the server's CROSSSLOT come back, as
  `redis.exceptions.ClusterCrossSlotError` (a `ResponseError`).
- `pipeline(transaction=False)` of keys in different slots works: the pipeline is split per
  node and the replies come back in the order the commands were queued. The store relies on
  it with the commands it pipelines (hgetall, hget, exists, zadd, zrem, pexpireat, xadd,
  pexpire, xack, xdel).
- Whether a script can be queued on a cluster pipeline depends on the release: redis-py 8.0
  and 8.1 raise `RedisClusterException` ("Calling pipelined function evalsha is blocked
  when running redis in cluster mode"), 8.2 sends it. The store never queues one: it calls
  each script on the client, with keys of one slot (tested below on a RedisStore).
- `pipeline(transaction=True)` works when every key is in one slot; across slots redis-py 8.1
  raises `redis.exceptions.CrossSlotTransactionError` (a `RedisClusterException`) and
  nothing of it is applied.
- `xgroup_create`, `xadd`, `xreadgroup`, `xautoclaim`, `xack`, `xpending` work on one stream;
  `xreadgroup` over streams of one hash tag works in one call (the run queue's streams);
  over streams in different slots redis-py 8.1 raises `RedisClusterException`
  ("XREADGROUP - all keys must map to the same key slot"), which the queue never does.
- `zadd` and `zrangebyscore` work.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest
import pytest_asyncio
from redis.asyncio import RedisCluster as AsyncRedisCluster
from redis.asyncio.cluster import ClusterPipeline
from redis.crc import key_slot
from redis.exceptions import (
    RedisClusterException,
    ResponseError,
)

from storage import Lease, RedisStore, open_store
from tests.redis_cluster import RedisCluster

from .conformance.test_runs import event, new_run

pytestmark = pytest.mark.redis

_prefixes = itertools.count()

SWAP = "redis.call('set', KEYS[1], ARGV[1]); return redis.call('get', KEYS[2])"


@pytest_asyncio.fixture
async def client(redis_cluster: RedisCluster) -> AsyncIterator[AsyncRedisCluster]:
    c: AsyncRedisCluster = AsyncRedisCluster.from_url(redis_cluster.url, decode_responses=True)
    await c.initialize()
    yield c
    await c.aclose()


@pytest.fixture
def prefix() -> str:
    """A key prefix no other test uses on the shared cluster."""
    return f"cl{next(_prefixes)}"


def keys_on_every_node(client: AsyncRedisCluster, prefix: str) -> dict[str, str]:
    """One key per node, node name -> key."""
    found: dict[str, str] = {}
    for i in itertools.count():
        key = f"{prefix}:k{i}"
        node = client.get_node_from_key(key)
        assert node is not None
        found.setdefault(node.name, key)
        if len(found) == len(client.get_primaries()):
            return found
    raise AssertionError("unreachable")


def test_the_cluster_has_three_masters_on_loopback(redis_cluster: RedisCluster) -> None:
    assert len(redis_cluster.ports) == len(set(redis_cluster.ports)) == 3
    assert 6379 not in redis_cluster.ports
    assert redis_cluster.url == f"redis://127.0.0.1:{redis_cluster.ports[0]}"
    assert all((redis_cluster.workdir / f"nodes-{p}.conf").exists() for p in redis_cluster.ports)


async def test_keys_on_every_node(client: AsyncRedisCluster, prefix: str) -> None:
    primaries = client.get_primaries()
    assert len(primaries) == 3
    assert {n.host for n in primaries} == {"127.0.0.1"}
    keys = keys_on_every_node(client, prefix)
    assert len({key_slot(k.encode()) for k in keys.values()}) == 3
    for node, key in keys.items():
        await client.set(key, node)
    for node, key in keys.items():
        assert await client.get(key) == node


async def test_a_script_on_one_hash_tag_runs(client: AsyncRedisCluster, prefix: str) -> None:
    one, two = f"{{{prefix}:x}}:1", f"{{{prefix}:x}}:2"
    assert key_slot(one.encode()) == key_slot(two.encode())
    swap = client.register_script(SWAP)
    await client.set(two, "two")
    assert await swap(keys=[one, two], args=["one"]) == "two"
    assert await client.get(one) == "one"
    await client.script_flush()  # the script reloads itself on NOSCRIPT
    assert await swap(keys=[two, one], args=["2"]) == "one"


async def test_a_script_across_slots_is_refused(client: AsyncRedisCluster, prefix: str) -> None:
    """Why every key of a run shares its hash tag: a script across slots never runs (the
    client refuses it, or the server: which one is redis-py's detail)."""
    swap = client.register_script(SWAP)
    one, two = f"{{{prefix}:x}}:1", f"{{{prefix}:y}}:1"
    assert key_slot(one.encode()) != key_slot(two.encode())
    with pytest.raises((RedisClusterException, ResponseError)):
        await swap(keys=[one, two], args=["v"])
    assert await client.exists(one) == 0

    # Past the client's check the server answers CROSSSLOT, even with both keys on its node.
    node = client.get_node_from_key(one)
    other = next(
        k
        for i in itertools.count()
        if key_slot((k := f"{{{prefix}:z{i}}}:1").encode()) != key_slot(one.encode())
        and client.get_node_from_key(k) is node
    )
    await client.script_load(SWAP)
    with pytest.raises(ResponseError, match="same slot"):  # the server's CROSSSLOT error
        await client.execute_command("EVALSHA", swap.sha, 2, one, other, "v", target_nodes=node)
    assert await client.exists(one) == 0


async def test_a_pipeline_across_slots(client: AsyncRedisCluster, prefix: str) -> None:
    """The commands the store pipelines, over keys on every node, each answered in the order
    queued: runs read in a listing, `gc` and `due`; index entries moved; retention set."""
    keys = list(keys_on_every_node(client, prefix).values())
    for i, key in enumerate(keys):
        await client.hset(key, mapping={"i": str(i)})
    pipe = client.pipeline(transaction=False)
    for key in [*keys, f"{prefix}:missing"]:
        pipe.hgetall(key)
    assert await pipe.execute() == [{"i": "0"}, {"i": "1"}, {"i": "2"}, {}]

    one, two = (f"{prefix}:status:{s}" for s in ("running", "done"))
    await client.zadd(one, {"r1": 1.0})
    if client.get_node_from_key(one) is client.get_node_from_key(two):
        two = next(k for i in itertools.count() if client.get_node_from_key(
            k := f"{prefix}:status:done{i}") is not client.get_node_from_key(one))  # fmt: skip
    later = int(time.time() * 1000) + 3_600_000
    pipe.zrem(one, "r1")
    pipe.zadd(two, {"r1": 2.0}, nx=True)
    pipe.hget(keys[1], "i")
    pipe.exists(keys[2])
    pipe.exists(f"{prefix}:missing")
    pipe.pexpireat(keys[0], later)
    assert await pipe.execute() == [1, 1, "1", 1, 0, True]
    assert await client.zrange(two, 0, -1) == ["r1"] and await client.zcard(one) == 0
    assert 0 < await client.pttl(keys[0]) <= 3_600_000


async def test_the_store_never_queues_a_script_on_a_cluster_pipeline(
    redis_cluster: RedisCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the store relies on instead of a redis-py detail (see the module's findings):
    every script is called on the client, for one run's slot; pipelines carry only plain
    commands. A run's life on a Cluster store: start, commits, listings, `gc`, `due`, the
    live channel, the queue, limits."""
    pipelined: list[str] = []
    sent: list[str] = []
    queue_command = ClusterPipeline.execute_command
    send_command = AsyncRedisCluster.execute_command

    def into_a_pipeline(self: ClusterPipeline, *args: Any, **kwargs: Any) -> Any:
        pipelined.append(str(args[0]).upper())
        return queue_command(self, *args, **kwargs)

    async def on_the_client(self: AsyncRedisCluster, *args: Any, **kwargs: Any) -> Any:
        sent.append(str(args[0]).upper())
        return await send_command(self, *args, **kwargs)

    monkeypatch.setattr(ClusterPipeline, "execute_command", into_a_pipeline)
    monkeypatch.setattr(AsyncRedisCluster, "execute_command", on_the_client)
    store = open_store(f"redis+cluster://127.0.0.1:{redis_cluster.ports[0]}?prefix=clscripts")
    assert isinstance(store, RedisStore)
    try:
        _, lease = await store.start(new_run("s1"), owner="w1", ttl=10)
        assert isinstance(lease, Lease)
        waiting = replace(event(1, key="s1:0:go"), status="waiting", deadline=time.time() - 1)
        assert await store.commit("s1", expected_seq=0, token=lease.token, event=waiting)
        assert await store.due(time.time()) == ["s1"]
        await store.publish("s1", [(1, {"text": "hi"})])
        await store.create(new_run("s2"))
        again = await store.acquire_lease("s1", "w1", 10)
        assert isinstance(again, Lease)
        done = replace(event(2, key="s1:1:go"), status="done", expires_at=time.time() + 3600)
        assert await store.commit("s1", expected_seq=1, token=again.token, event=done)
        assert {r.run_id for r in await store.list_runs()} == {"s1", "s2"}
        assert [r.run_id for r in await store.list_runs(status="done")] == ["s1"]
        assert await store.gc(time.time()) == 0
        queue = store.queue
        await queue.enqueue("tester", "s2")
        (job,) = await queue.claim("c1", ["tester"], 1, 0.1)
        await queue.ack(job)
        await store.ledger.set_limits("acme", {"requests": 5, "tokens": None})
    finally:
        await store.close()
    scripts = {"EVAL", "EVALSHA", "EVAL_RO", "EVALSHA_RO", "FCALL", "FCALL_RO"}
    assert {"HGETALL", "ZADD", "ZREM", "XADD", "XACK"} <= set(pipelined)  # it did pipeline
    assert not scripts & set(pipelined)
    assert "EVALSHA" in sent  # its scripts went to the client, as commands of their own


async def test_a_transaction_needs_one_slot(client: AsyncRedisCluster, prefix: str) -> None:
    """The ledger's `set_limits` is a transaction on one key: it works. One across slots
    never applies any of its commands (refused by the client or the server)."""
    one, two = f"{{{prefix}}}:1", f"{{{prefix}}}:2"
    async with client.pipeline(transaction=True) as tx:
        tx.set(one, "a")
        tx.get(one)
        tx.get(two)
        assert await tx.execute() == [True, "a", None]
    a, b = list(keys_on_every_node(client, prefix).values())[:2]
    async with client.pipeline(transaction=True) as tx:
        tx.set(a, "a")
        tx.set(b, "b")
        with pytest.raises((RedisClusterException, ResponseError)):
            await tx.execute()
    assert await client.exists(a, b) == 0


async def test_streams_with_a_consumer_group(client: AsyncRedisCluster, prefix: str) -> None:
    stream = f"{{{prefix}}}:events"
    await client.xgroup_create(stream, "g", id="0", mkstream=True)
    ids = [await client.xadd(stream, {"n": str(i)}) for i in range(3)]

    read: Any = await client.xreadgroup("g", "w1", {stream: ">"}, count=2)
    assert [[name, [i for i, _ in entries]] for name, entries in read] == [[stream, ids[:2]]]

    claimed: Any = await client.xautoclaim(stream, "g", "w2", min_idle_time=0, start_id="0-0")
    assert [i for i, _ in claimed[1]] == ids[:2]
    assert claimed[1][0][1] == {"n": "0"}

    assert await client.xack(stream, "g", *ids[:2]) == 2
    pending: Any = await client.xpending(stream, "g")
    assert pending["pending"] == 0

    # The run queue's streams share one hash tag, so a worker reads them all in one call.
    other = f"{{{prefix}}}:other-events"
    assert key_slot(other.encode()) == key_slot(stream.encode())
    await client.xgroup_create(other, "g", id="0", mkstream=True)
    more = [await client.xadd(other, {"n": "x"}), await client.xadd(stream, {"n": "3"})]
    read = await client.xreadgroup("g", "w1", {stream: ">", other: ">"})
    got = {name: [i for i, _ in entries] for name, entries in read}
    assert got == {stream: [ids[2], more[1]], other: [more[0]]}


async def test_sorted_sets(client: AsyncRedisCluster, prefix: str) -> None:
    key = f"{prefix}:due"
    assert await client.zadd(key, {"a": 1, "b": 2, "c": 3}) == 3
    assert await client.zrangebyscore(key, 1, 2) == ["a", "b"]
    assert await client.zrangebyscore(key, "(1", "+inf", withscores=True) == [
        ("b", 2.0),
        ("c", 3.0),
    ]
