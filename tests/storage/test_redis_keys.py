"""Redis key names that cannot collide: queue streams, dead letters, prefixes, URLs."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from storage import RedisStore, open_store

from ..redis_server import RedisServer


@pytest.mark.redis
async def test_an_agent_named_dead_gets_its_own_jobs_not_the_dead_letters(
    redis_store: RedisStore,
) -> None:
    queue: Any = redis_store.queue
    await queue.ensure_group(["dead", "other"])
    await queue.enqueue("other", "r-other")
    [job] = await queue.claim("c1", ["other"], 10, 0.1)
    await queue.dead_letter(job, "cannot go on")
    await queue.enqueue("dead", "r-dead")
    jobs = await queue.claim("c2", ["dead"], 10, 0.1)
    assert [(j.agent, j.run_id) for j in jobs] == [("dead", "r-dead")]
    assert queue.stream("dead") != queue.dead_letters


@pytest.mark.redis
async def test_a_dotted_agent_name_round_trips_through_its_stream(
    redis_store: RedisStore,
) -> None:
    queue: Any = redis_store.queue
    await queue.enqueue("billing.v2", "r1")
    [job] = await queue.claim("c", ["billing.v2"], 10, 0.1)
    assert (job.agent, job.run_id) == ("billing.v2", "r1")
    await queue.ack(job)
    assert await queue.pending(["billing.v2"]) == {"billing.v2": 0}


@pytest.mark.redis
async def test_an_older_stream_name_is_renamed_when_first_used(
    redis_store: RedisStore,
) -> None:
    old = f"{redis_store.prefix}:{{queue}}:billing"  # as an older agentfsm named it
    await redis_store.client.xgroup_create(old, "workers", id="0", mkstream=True)
    await redis_store.client.xadd(old, {"run": "r-old", "kind": "run"})
    queue: Any = redis_store.queue
    await queue.ensure_group(["billing"])
    jobs = await queue.claim("c", ["billing"], 10, 0.1)
    assert [j.run_id for j in jobs] == ["r-old"]
    assert not await redis_store.client.exists(old)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis://127.0.0.1:1/abc", "the path '/abc' is not a database number"),
        ("redis://127.0.0.1:1/0?socket_timeout=soon", "socket_timeout='soon' must be a positive"),
        ("redis://127.0.0.1:1/0?socket_timeout=-1", "socket_timeout='-1' must be a positive"),
        ("redis://127.0.0.1:1/0?sokcet_timeout=1", "unknown option 'sokcet_timeout'"),
        ("redis://127.0.0.1:1/0?prefix=a:b", "invalid key prefix 'a:b'"),
        ("redis://127.0.0.1:1/0?prefix=*", "invalid key prefix '*'"),
        ("redis+sentry://127.0.0.1:1/0", "unknown store URL"),
        ("redis+sentinel://127.0.0.1:1", "name the service"),
        ("redis://127.0.0.1:1/0?durability=replica:1", "unknown durability level"),
        ("redis://127.0.0.1:1/0?durability=replicas:1&durability_timeout=5", "below"),
        ("memory://?durability=fsync", "keeps nothing on disk"),
    ],
)
def test_a_bad_url_is_a_clear_error(url: str, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        open_store(url)
    assert message in str(caught.value)


def test_good_url_options_are_taken() -> None:
    store = open_store("redis://127.0.0.1:1/3?socket_timeout=0.5&retry_for=1&prefix=x.y")
    assert isinstance(store, RedisStore) and store.prefix == "x.y"
    assert isinstance(store.client, Redis)
    kwargs = store.client.connection_pool.connection_kwargs
    assert kwargs["socket_timeout"] == 0.5 and kwargs["db"] == 3


@pytest.mark.redis
async def test_unsafe_server_settings_are_warned_about_once(
    redis_factory: type[RedisServer], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = redis_factory(tmp_path / "lru").start()  # no AOF: appendonly no
    raw = Redis.from_url(server.url)
    await raw.config_set("maxmemory-policy", "allkeys-lru")
    await raw.aclose()
    caplog.set_level(logging.WARNING, logger="agentfsm.storage")
    for _ in range(2):  # a second store on the same server says nothing new
        store = RedisStore.from_url(server.url, prefix="settings")
        assert await store.load("x") is None
        await store.close()
    said = [r.getMessage() for r in caplog.records if r.name == "agentfsm.storage"]
    assert len(said) == 2, said
    assert any("maxmemory-policy is allkeys-lru" in m and "noeviction" in m for m in said)
    assert any("appendonly is no" in m and "appendonly yes" in m for m in said)
