"""What only the Postgres store has: its URL options, its schema versions, what it says when
the server cannot be used, and event loops that come and go (the contract itself is proven
by the conformance suite)."""

from __future__ import annotations

import asyncio
import sys

import asyncpg
import pytest

from storage import open_store
from storage.errors import DurabilityUnavailable, StorageError, StoreUnavailable
from storage.postgres import SCHEMA_VERSION, PostgresStore

from ..postgres_server import execute, require_postgres, schema_url
from ..redis_server import free_port
from .conformance.test_runs import new_run


def test_without_the_extra_the_error_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "storage.postgres", None)  # as if asyncpg were missing
    with pytest.raises(ImportError, match=r'pip install "agentfsm\[postgres\]"'):
        open_store("postgresql://127.0.0.1/test")


def test_bad_urls_are_refused_naming_the_option_and_never_the_password() -> None:
    with pytest.raises(ValueError, match="invalid Postgres schema name 'Bad-Name'") as bad:
        open_store("postgresql://ana:s3cret@127.0.0.1/test?schema=Bad-Name")
    assert "s3cret" not in str(bad.value)
    with pytest.raises(ValueError, match="pool must be 1 or more") as pool:
        open_store("postgres://ana:s3cret@127.0.0.1/test?pool=0")
    assert "s3cret" not in str(pool.value) and "***" in str(pool.value)
    store = open_store("postgres://127.0.0.1/test", prefix="tenant_a")
    assert isinstance(store, PostgresStore) and store.schema == "tenant_a"


async def test_fsync_is_refused_where_commits_do_not_wait_for_the_disk() -> None:
    off = "options=-c%20synchronous_commit%3Doff"
    url = schema_url()
    store = open_store(f"{url}&durability=fsync&{off}")
    assert str(store.durability) == "fsync"
    with pytest.raises(DurabilityUnavailable, match="synchronous_commit = off"):
        await store.load("r1")
    await store.close()
    store = open_store(f"{url}&{off}")  # the default level takes the server as it is
    assert await store.load("r1") is None
    await store.close()
    store = open_store(url, durability="fsync")  # the server's default: on
    assert await store.load("r1") is None
    await store.close()


async def test_a_server_nobody_listens_on_says_so() -> None:
    store = PostgresStore(f"postgresql://127.0.0.1:{free_port()}/test?retry_for=0.3")
    with pytest.raises(StoreUnavailable, match="connection refused: nothing listens there"):
        await store.ping(0.5)
    with pytest.raises(StoreUnavailable, match="to load run 'r1'"):  # after its retries
        await store.load("r1")
    await store.close()


async def test_a_schema_of_something_else_or_of_a_newer_agentfsm_is_refused() -> None:
    base = require_postgres()
    conn = await asyncpg.connect(base)
    foreign, newer = schema_url(), schema_url()
    try:
        name = foreign.rsplit("=", 1)[1]
        await conn.execute(f"CREATE SCHEMA {name}; CREATE TABLE {name}.orders (id int)")
        store = open_store(foreign)
        with pytest.raises(StorageError, match="holds tables of something else"):
            await store.load("r1")
        await store.close()
        store = open_store(newer)
        await store.create(new_run())
        await execute(store, "INSERT INTO {s}.schema_version (version) VALUES ($1)", 99)
        await store.close()
        again = open_store(newer)  # a new process, say, of an older agentfsm
        with pytest.raises(
            StorageError, match=f"version 99; this agentfsm reads up to version {SCHEMA_VERSION}"
        ):
            await again.load("run-1")
        await again.close()
    finally:
        for url in (foreign, newer):
            await conn.execute(f"DROP SCHEMA IF EXISTS {url.rsplit('=', 1)[1]} CASCADE")
        await conn.close()


async def test_stores_opening_a_new_schema_at_once_make_it_once(
    postgres_schemas: list[str],
) -> None:
    url = schema_url()
    stores = [PostgresStore(url) for _ in range(4)]
    assert await asyncio.gather(*(s.list_runs() for s in stores)) == [[]] * 4
    versions = await execute(stores[0], "SELECT array_agg(version) FROM {s}.schema_version")
    assert versions == list(range(1, SCHEMA_VERSION + 1))
    for store in stores:
        await store.close()


async def test_a_runs_live_channel_keeps_its_newest_items_whatever_others_publish(
    postgres_schemas: list[str],
) -> None:
    """Trimming counts the run's own items (crash accounting reads its "started" items)."""
    store = open_store(schema_url())
    assert isinstance(store, PostgresStore)
    store.live_maxlen = 3
    await store.publish("a", [(0, {"n": 0})])
    for n in range(20):
        await store.publish("b", [(0, {"n": n})])
    await store.publish("a", [(1, {"n": 1})])
    assert [e.item["n"] for e in await store.live("a")] == [0, 1]
    assert [e.item["n"] for e in await store.live("b")] == [17, 18, 19]
    await store.close()


async def test_a_database_that_does_not_exist_is_named_with_the_way_out() -> None:
    base = require_postgres().rsplit("/", 1)[0]
    store = PostgresStore(f"{base}/no_such_db_agentfsm?retry_for=0.3")
    with pytest.raises(StorageError, match=r"no_such_db_agentfsm.*createdb"):
        await store.load("r1")
    await store.close()


def test_one_store_serves_one_event_loop_after_another(postgres_schemas: list[str]) -> None:
    """Scripts call `asyncio.run` more than once with one store (connections belong to a loop)."""
    store = open_store(schema_url())
    asyncio.run(store.create(new_run()))
    loaded = asyncio.run(store.load("run-1"))
    assert loaded is not None and loaded.seq == 0
    asyncio.run(store.close())
