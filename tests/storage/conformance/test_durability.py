"""The durability level is part of the contract: every backend says its level
(`Store.durability`, "primary" unless chosen), and a level that waits for a replica is,
on every backend, either refused before anything is written (`DurabilityUnavailable`) or,
with no replica to reach, an unknown outcome: never a success."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from storage import RunRecord, Store, open_store
from storage.errors import DurabilityUnavailable, OutcomeUnknown

from ...postgres_server import schema_url
from ...redis_cluster import RedisCluster
from ...redis_server import RedisServer
from .conftest import BACKENDS


async def test_every_store_says_its_level(store: Store) -> None:
    assert (store.durability.level, store.durability.replicas) == ("primary", 0)


def _run(run_id: str) -> RunRecord:
    now = time.time()
    return RunRecord(
        run_id=run_id, agent="a", version=1, state="s", seq=0, status="running", memory={},
        created_at=now, updated_at=now, nonce="n",
    )  # fmt: skip


@pytest.mark.parametrize("kind", [k for k in BACKENDS if k != "fakeredis"])
async def test_a_replica_level_without_a_replica_is_refused_or_unknown_never_a_success(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    level = "?durability=replicas:1&durability_timeout=0.05"
    if kind in ("embedded", "memory", "postgres"):
        url = {"memory": "memory://", "postgres": schema_url()}.get(
            kind, f"sqlite:///{tmp_path}/s.db"
        )
        with pytest.raises(DurabilityUnavailable, match="replicas:1"):
            open_store(url, durability="replicas:1")
        return
    if kind == "cluster":
        cluster: RedisCluster = request.getfixturevalue("redis_cluster")
        store = open_store(f"redis+cluster://127.0.0.1:{cluster.ports[0]}{level}", prefix="d0")
        expected: type[Exception] = DurabilityUnavailable
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        store = open_store(server.url + level, prefix="d1")  # a server with no replica
        expected = OutcomeUnknown
    try:
        with pytest.raises(expected):
            await store.create(_run("d"))
        if expected is DurabilityUnavailable:  # refused before anything was written
            with pytest.raises(DurabilityUnavailable):
                await store.load("d")
            plain = open_store(store._where.split("?")[0], prefix="d0")  # type: ignore[attr-defined]
            assert await plain.load("d") is None
            await plain.close()
    finally:
        await store.close()
