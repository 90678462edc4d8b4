"""The `redis_cluster` fixture, and what redis-py's asyncio cluster client can do on it.

Findings (redis-py 8.1, redis-server 7.0, `redis.asyncio.RedisCluster`, decode_responses=True):

- `register_script` works; a script whose keys share a hash tag (`{x}`) runs, and reloads
  itself after SCRIPT FLUSH (NOSCRIPT -> SCRIPT LOAD -> EVALSHA) as on a single server.
- A script whose keys are in different slots never reaches a server: the client raises
  `redis.exceptions.RedisClusterException` ("EVALSHA - all keys must map to the same key
  slot"), which is NOT a `ResponseError`. Only when the client's slot check is bypassed
  (an explicit `target_nodes=`) does the server's CROSSSLOT come back, as
  `redis.exceptions.ClusterCrossSlotError` (a `ResponseError`).
- `pipeline(transaction=False)` with `hgetall` of keys in different slots works: the
  pipeline is split per node and the replies come back in order.
- BUT a script cannot be queued on a cluster pipeline: `script(keys, args, client=pipe)`
  (and `pipe.evalsha`) raise `RedisClusterException` ("Calling pipelined function evalsha
  is blocked when running redis in cluster mode").
- `pipeline(transaction=True)` works when every key is in one slot; across slots it raises
  `redis.exceptions.CrossSlotTransactionError` (a `RedisClusterException`).
- `xgroup_create`, `xadd`, `xreadgroup`, `xautoclaim`, `xack`, `xpending` work on one stream;
  `xreadgroup` over two streams in different slots raises `RedisClusterException`
  ("XREADGROUP - all keys must map to the same key slot"): read one stream per call.
- `zadd` and `zrangebyscore` work.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from redis.asyncio import RedisCluster as AsyncRedisCluster
from redis.crc import key_slot
from redis.exceptions import (
    ClusterCrossSlotError,
    CrossSlotTransactionError,
    RedisClusterException,
    ResponseError,
)

from tests.redis_cluster import RedisCluster

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
    swap = client.register_script(SWAP)
    one, two = f"{{{prefix}:x}}:1", f"{{{prefix}:y}}:1"
    assert key_slot(one.encode()) != key_slot(two.encode())
    with pytest.raises(RedisClusterException, match="same key slot") as refused:
        await swap(keys=[one, two], args=["v"])
    assert not isinstance(refused.value, ResponseError)  # the client refuses; no server saw it
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
    with pytest.raises(ClusterCrossSlotError, match="same slot"):
        await client.execute_command("EVALSHA", swap.sha, 2, one, other, "v", target_nodes=node)
    assert issubclass(ClusterCrossSlotError, ResponseError)


async def test_a_pipeline_across_slots(client: AsyncRedisCluster, prefix: str) -> None:
    keys = list(keys_on_every_node(client, prefix).values())
    for i, key in enumerate(keys):
        await client.hset(key, mapping={"i": str(i)})
    pipe = client.pipeline(transaction=False)
    for key in [*keys, f"{prefix}:missing"]:
        pipe.hgetall(key)
    assert await pipe.execute() == [{"i": "0"}, {"i": "1"}, {"i": "2"}, {}]

    swap = client.register_script(SWAP)
    with pytest.raises(RedisClusterException, match="blocked"):
        await swap(keys=[f"{{{prefix}}}:a", f"{{{prefix}}}:b"], args=["v"], client=pipe)  # type: ignore[arg-type]


async def test_a_transaction_needs_one_slot(client: AsyncRedisCluster, prefix: str) -> None:
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
        with pytest.raises(CrossSlotTransactionError):
            await tx.execute()
    assert issubclass(CrossSlotTransactionError, RedisClusterException)


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

    other = f"{{{prefix}:other}}:events"
    assert key_slot(other.encode()) != key_slot(stream.encode())
    await client.xgroup_create(other, "g", id="0", mkstream=True)
    with pytest.raises(RedisClusterException, match="same key slot"):
        await client.xreadgroup("g", "w1", {stream: ">", other: ">"})


async def test_sorted_sets(client: AsyncRedisCluster, prefix: str) -> None:
    key = f"{prefix}:due"
    assert await client.zadd(key, {"a": 1, "b": 2, "c": 3}) == 3
    assert await client.zrangebyscore(key, 1, 2) == ["a", "b"]
    assert await client.zrangebyscore(key, "(1", "+inf", withscores=True) == [
        ("b", 2.0),
        ("c", 3.0),
    ]
