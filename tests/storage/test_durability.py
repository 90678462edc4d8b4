"""Durability levels: chosen per store, waited for behind each commit on real servers, an
unreached level is an unknown outcome (never a success, safe to retry under the same key),
and a level the server cannot give is refused when the store is first used."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
import redis
from pydantic import BaseModel
from redis.exceptions import ReadOnlyError, ResponseError

from agents import Agent, tool
from statemachine import StepContext
from storage import EmbeddedStore, Event, Lease, RedisStore, RunRecord, Store, open_store
from storage.base import Durability
from storage.errors import DurabilityUnavailable, OutcomeUnknown
from storage.redis._connect import failing_over

from ..redis_server import RedisServer
from ..replication import (
    FAST_SYNC,
    detach,
    follow,
    promote,
    replica_of,
    require_waitaof_server,
    wait_replica_fsync,
)


class Count(BaseModel):
    n: int = 0


def looping(keys: list[str]) -> Agent[Count]:
    def bump(memory: Count, ctx: StepContext) -> int:
        keys.append(ctx.idempotency_key)
        return memory.n + 1

    return Agent(
        name="loop", memory=Count, initial="s", final=["done"],
        transitions=[
            tool("finish", "s", "done", bump, into="n", guard=lambda m: m.n < 0),
            tool("bump", "s", "s", bump, into="n", in_thread=False),
        ],
    )  # fmt: skip


@pytest.mark.parametrize(
    ("text", "level", "replicas"),
    [("primary", "primary", 0), ("fsync", "fsync", 0), ("replicas:2", "replicas", 2),
     (" Replicas-Fsync:1 ", "replicas-fsync", 1)],
)  # fmt: skip
def test_levels_are_read_from_their_names(text: str, level: str, replicas: int) -> None:
    got = Durability.parse(text, "0.5")
    assert (got.level, got.replicas, got.timeout) == (level, replicas, 0.5)
    assert Durability.parse(str(got)) == Durability(level=got.level, replicas=replicas)


@pytest.mark.parametrize("text", ["replicas", "replicas:0", "fsync:1", "all", "replica:1"])
def test_an_unknown_level_names_the_levels_there_are(text: str) -> None:
    with pytest.raises(ValueError, match=r"unknown durability level.*replicas:N"):
        Durability.parse(text)


def test_the_embedded_store_maps_levels_to_sqlite_synchronous(tmp_path: Path) -> None:
    def synchronous(store: Store) -> int:
        assert isinstance(store, EmbeddedStore)
        return int(store._db.execute("PRAGMA synchronous").fetchone()[0])

    default = open_store(f"sqlite:///{tmp_path}/a.db")
    fsync = open_store(f"sqlite:///{tmp_path}/b.db", durability="fsync")
    assert (synchronous(default), str(default.durability)) == (1, "primary")  # NORMAL
    assert (synchronous(fsync), str(fsync.durability)) == (2, "fsync")  # FULL
    with pytest.raises(DurabilityUnavailable, match="has none"):
        open_store(f"sqlite:///{tmp_path}/c.db?durability=replicas:1")
    with pytest.raises(ValueError, match="was passed"):
        open_store(f"sqlite:///{tmp_path}/d.db?durability=fsync", durability="primary")


@pytest.mark.redis
async def test_a_level_the_server_lacks_is_refused_naming_version_and_level(
    redis_server: RedisServer,
) -> None:
    store = open_store(redis_server.url, prefix="refused", durability="replicas-fsync:1")
    try:
        for attempt in (store.load("r"), store.ping(10), store.load("r")):  # every call
            with pytest.raises(DurabilityUnavailable) as refused:
                await attempt
            assert "7.0.15" in str(refused.value) and "'replicas-fsync:1'" in str(refused.value)
    finally:
        await store.close()


@pytest.mark.redis
async def test_an_unreached_level_is_an_unknown_outcome_and_a_retry_commits_it_once(
    redis_factory: type[RedisServer], tmp_path: Path
) -> None:
    primary = redis_factory(tmp_path / "p", extra=FAST_SYNC).start()
    replica = replica_of(primary, redis_factory(tmp_path / "r"))
    keys: list[str] = []
    # 1 s: a busy machine's stall must not make the commits before the cut unknown.
    store = open_store(primary.url + "?durability_timeout=1", durability="replicas:1")
    assert isinstance(store, RedisStore) and str(store.durability) == "replicas:1"
    try:
        run = await looping(keys).start(store, Count(), run_id="u")
        first = await run.step()
        assert first is not None and first.seq == 1
        detach(replica, primary)
        for _ in range(2):  # the first try, then its retry (a duplicate: it waits again)
            with pytest.raises(OutcomeUnknown, match=r"0 of 1 replicas.*same idempotency key"):
                await run.step()
            assert (run.seq, run.memory.n) == (1, 1)  # not taken for a success
        follow(replica, primary)
        second = await run.step()
        assert second is not None and (second.seq, run.memory.n) == (2, 2)
        # The retries sent the cut-short commit again under its key: the step body ran once.
        assert keys == [first.key, second.key]
        stored = await store.load("u")
        assert stored is not None and stored.seq == 2
    finally:
        await store.close()


def _event(seq: int, key: str) -> Event:
    return Event(seq=seq, trigger="t", kind="tool", source="s", dest="s", status="running", key=key)


async def _started(store: Store, run_id: str) -> Lease:
    now = time.time()
    run = RunRecord(
        run_id=run_id, agent="a", version=1, state="s", seq=0, status="running", memory={},
        created_at=now, updated_at=now, nonce="n",
    )  # fmt: skip
    _, lease = await store.start(run, owner="me", ttl=30)
    assert isinstance(lease, Lease)
    return lease


@pytest.mark.redis
async def test_waitaof_levels_on_a_server_that_has_them(
    redis_factory: type[RedisServer], tmp_path: Path
) -> None:
    binary = require_waitaof_server()
    # appendfsync always: each write is on disk before its reply, and WAITAOF confirms it at
    # once (with everysec it waits for the next fsync: up to a second).
    primary = redis_factory(
        tmp_path / "p", appendfsync="always", binary=binary, extra=FAST_SYNC
    ).start()
    replica = replica_of(primary, redis_factory(tmp_path / "r", appendfsync="always"))
    wait_replica_fsync(primary)
    bare = redis_factory(tmp_path / "bare", binary=binary).start()  # appendonly no
    fsync = open_store(primary.url, prefix="f", durability="fsync")
    # A replica reports what its disk holds about once a second (Redis 8.2): the wait is
    # that long, however fast its disk (5 s: a margin for a busy machine).
    slow = "?socket_timeout=8&durability_timeout=5"
    both = open_store(primary.url + slow, prefix="b", durability="replicas-fsync:1")
    short = open_store(primary.url + "?durability_timeout=0.3", prefix="b",
                       durability="replicas-fsync:1")  # fmt: skip
    refused = open_store(bare.url, durability="fsync")
    try:
        for store in (fsync, both):
            lease = await _started(store, "w")
            outcome = await store.commit("w", expected_seq=0, token=lease.token,
                                         event=_event(1, "k1"))  # fmt: skip
            assert outcome.seq == 1  # type: ignore[union-attr]
        detach(replica, primary)
        with pytest.raises(OutcomeUnknown, match="0 of 1 replicas had written it to disk"):
            await short.commit("w", expected_seq=1, token=lease.token, event=_event(2, "k2"))
        with pytest.raises(DurabilityUnavailable, match="appendonly no"):
            await refused.load("w")
    finally:
        for store in (fsync, both, short, refused):
            await store.close()


@pytest.mark.parametrize(
    ("reply", "retried"),
    [(ReadOnlyError("You can't write against a read only replica."), True),
     (ResponseError("NOREPLICAS Not enough good replicas to write."), True),
     (ResponseError("UNBLOCKED force unblock from blocking operation"), True),
     (ResponseError("CLUSTERDOWN The cluster is down"), True),
     (ResponseError("Command # 1 (EVALSHA x) of pipeline caused error: READONLY no"), True),
     (ResponseError("NOSCRIPT No matching script."), False),
     (ResponseError("ERR wrong number of arguments"), False)],
)  # fmt: skip
def test_the_replies_of_a_failover_are_the_ones_retried(reply: Exception, retried: bool) -> None:
    assert failing_over(reply) is retried


@pytest.mark.redis
async def test_a_write_refused_by_a_replica_is_retried_until_it_is_promoted(
    redis_factory: type[RedisServer], tmp_path: Path
) -> None:
    primary = redis_factory(tmp_path / "p", extra=FAST_SYNC).start()
    replica = replica_of(primary, redis_factory(tmp_path / "r"))
    store = open_store(replica.url + "?retry_for=60&retries=10000", prefix="ro")

    def refused_once() -> bool:  # the store's write reached the replica and was refused
        with redis.Redis(port=replica.port, decode_responses=True) as r:
            return int(r.info("errorstats").get("errorstat_READONLY", {}).get("count", 0)) > 0

    async def promote_when_refused() -> None:
        give_up = time.monotonic() + 60
        while not await asyncio.to_thread(refused_once):
            assert time.monotonic() < give_up, "no READONLY reply within 60 s"
            await asyncio.sleep(0.02)
        await asyncio.to_thread(promote, replica)

    now = time.time()
    run = RunRecord(
        run_id="ro", agent="a", version=1, state="s", seq=0, status="running", memory={},
        created_at=now, updated_at=now, nonce="n",
    )  # fmt: skip
    promoting = asyncio.create_task(promote_when_refused())
    try:
        stored = await store.create(run)  # READONLY, retried, then written
        await promoting
        assert stored.seq == 0 and (await store.load("ro")) is not None
    finally:
        promoting.cancel()
        await store.close()
