from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import fakeredis
import pytest
import pytest_asyncio

from storage import EmbeddedStore, RedisStore, Store, open_store
from storage.postgres import PostgresStore

from .cluster_fixture import redis_cluster  # noqa: F401  (a fixture, used by name)
from .postgres_server import drop_schemas, empty_postgres, require_postgres, schema_url
from .redis_server import RedisServer

_prefixes = itertools.count()


@pytest.fixture(scope="session", autouse=True)
def child_bytecode_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Child Python processes (hundreds in the suite) cache the bytecode they compile.

    Each child imports the project and the test helpers (about 60 modules); with
    PYTHONDONTWRITEBYTECODE set (as many container images do) each one compiled them again,
    about 0.07 s of CPU per process (a few per cent of its start-up, most of which is importing
    pydantic-ai). The cache lives in a temporary directory: nothing is written into the tree.
    """
    with pytest.MonkeyPatch.context() as env:
        env.delenv("PYTHONDONTWRITEBYTECODE", raising=False)
        env.setenv("PYTHONPYCACHEPREFIX", str(tmp_path_factory.mktemp("pycache")))
        yield


@pytest.fixture(scope="session", autouse=True)
def acknowledged_notes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """What stores acknowledged is noted in a file of the session's (`storage._acked`), for
    this process and the children it starts, not in the user's state folder."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("AGENTFSM_ACKNOWLEDGED", str(tmp_path_factory.mktemp("acked") / "acked.db"))
        yield


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server for the session; tests isolate themselves by key prefix."""
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def redis_factory(tmp_path: Path) -> Iterator[type[RedisServer]]:
    """Start servers of a test's own (to kill and restart); all are stopped afterwards."""
    started: list[RedisServer] = []

    class Factory(RedisServer):
        def __init__(self, workdir: Path | None = None, **kw: object) -> None:
            super().__init__(workdir or tmp_path / f"redis{len(started)}", **kw)  # type: ignore[arg-type]
            started.append(self)

    yield Factory
    for server in started:
        server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url


@pytest.fixture
def prefix() -> str:
    """A key prefix no other test uses on the shared server."""
    return f"t{next(_prefixes)}"


async def make_store(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if kind == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        return RedisStore.from_url(server.url, prefix=f"t{next(_prefixes)}")
    if kind == "fakeredis":
        return RedisStore(fakeredis.aioredis.FakeRedis(decode_responses=True))
    if kind == "embedded":
        return EmbeddedStore(tmp_path / "store.db")
    if kind == "memory":
        return open_store("memory://")
    if kind == "postgres":
        return await postgres_store(request)
    raise ValueError(kind)


@pytest.fixture(scope="session")
def postgres_schemas() -> Iterator[list[str]]:
    """Store URLs of schemas on the shared Postgres server that no test uses now; those the
    tests made are dropped at the end."""
    url = require_postgres()
    free: list[str] = []
    yield free
    asyncio.run(drop_schemas(url))


@pytest_asyncio.fixture
async def postgres_url(request: pytest.FixtureRequest) -> str:
    """The URL of an empty Postgres store of the test's own (for child processes)."""
    store = await postgres_store(request)
    await store.close()
    assert isinstance(store, PostgresStore)
    return store.url


async def postgres_store(request: pytest.FixtureRequest) -> Store:
    """A Postgres store in a schema of the test's own: an emptied one a test before used
    (emptying is much quicker than making the schema), else a new one."""
    free: list[str] = request.getfixturevalue("postgres_schemas")
    url = free.pop() if free else schema_url()
    request.addfinalizer(lambda: free.append(url))
    store = open_store(url)
    await empty_postgres(store)
    return store


STORE_KINDS = ["redis", "fakeredis", "embedded", "memory"]


@pytest_asyncio.fixture(params=STORE_KINDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """Each backend in turn: the same tests hold for all of them."""
    s = await make_store(request.param, request, tmp_path)
    yield s
    await s.close()


@pytest_asyncio.fixture
async def redis_store(redis_server: RedisServer) -> AsyncIterator[RedisStore]:
    """A store on the real redis-server, under a prefix of its own."""
    s = RedisStore.from_url(redis_server.url, prefix=f"t{next(_prefixes)}")
    yield s
    await s.close()


@pytest.fixture(params=["redis", "embedded"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A URL for child processes: the real redis-server, or an embedded store file."""
    if request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        return server.url
    return f"sqlite:///{tmp_path / 'store.db'}"
