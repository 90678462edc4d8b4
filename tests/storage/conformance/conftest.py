"""The conformance suite runs every contract test against every backend: the embedded store
(file and memory://), Redis on a real server, Redis Cluster on real servers, fakeredis, and
Postgres (a schema of each test's own on the machine's server).
A new backend joins by adding its kind here and making the suite pass."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from storage import RedisStore, Store

from ...conftest import make_store
from ...redis_cluster import RedisCluster

BACKENDS = ["embedded", "memory", "redis", "cluster", "fakeredis", "postgres"]
_prefixes = itertools.count()


async def open_backend(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if kind == "cluster":
        cluster: RedisCluster = request.getfixturevalue("redis_cluster")
        return RedisStore.from_url(
            f"redis+cluster://127.0.0.1:{cluster.ports[0]}?prefix=cf{next(_prefixes)}"
        )
    return await make_store(kind, request, tmp_path)


@pytest_asyncio.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """Each backend in turn."""
    s = await open_backend(request.param, request, tmp_path)
    yield s
    await s.close()
