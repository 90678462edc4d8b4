"""What is specific to EmbeddedStore: one file shared and reopened, URLs, schema versions."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path

import pytest
from pydantic import JsonValue

from storage import (
    Committed,
    Duplicate,
    EmbeddedStore,
    Lease,
    LeaseHeld,
    LeaseLost,
    RunStatus,
    StorageError,
    open_store,
)
from storage.embedded import SCHEMA_VERSION
from storage.embedded._checkpoint import Checkpointer
from storage.errors import StoreUnavailable

from .conformance.test_runs import event, new_run


async def leased(store: EmbeddedStore, owner: str, ttl: float = 10) -> Lease:
    lease = await store.acquire_lease("run-1", owner, ttl)
    assert isinstance(lease, Lease)
    return lease


async def test_the_file_survives_close_and_reopen_with_everything(tmp_path: Path) -> None:
    db = tmp_path / "store.db"
    store = EmbeddedStore(db)
    await store.create(new_run(notes={"a": [1, 2]}))
    lease = await leased(store, "w1")
    await store.commit("run-1", expected_seq=0, token=lease.token, event=event(1, key="k1", n=1))
    before = (await store.load("run-1"), await store.history("run-1"))
    await store.close()

    again = EmbeddedStore(db)
    assert (await again.load("run-1"), await again.history("run-1")) == before
    held = await again.acquire_lease("run-1", "w2", 10)
    assert isinstance(held, LeaseHeld) and held.owner == "w1"
    out = await again.commit("run-1", expected_seq=1, token=lease.token, event=event(2, key="k1"))
    assert out == Duplicate(seq=1)
    await again.close()


async def test_two_stores_on_one_file_share_commits_and_exclude_each_others_leases(
    tmp_path: Path,
) -> None:
    one, two = EmbeddedStore(tmp_path / "store.db"), EmbeddedStore(tmp_path / "store.db")
    await one.create(new_run())
    mine = await leased(one, "w1", ttl=0.05)
    held = await two.acquire_lease("run-1", "w2", 10)
    assert isinstance(held, LeaseHeld) and held.owner == "w1"
    await one.commit("run-1", expected_seq=0, token=mine.token, event=event(1, n=1))
    run = await two.load("run-1")
    assert run is not None and (run.seq, run.memory["n"]) == (1, 1)

    await asyncio.sleep(0.1)  # w1 stalls; its short lease runs out
    theirs = await two.acquire_lease("run-1", "w2", 10)
    assert isinstance(theirs, Lease) and theirs.crashes == 1 and theirs.token > mine.token
    late = await one.commit("run-1", expected_seq=1, token=mine.token, event=event(2, n=2))
    assert late == LeaseLost()
    assert not await one.renew_lease(mine)
    assert [e.seq for e in await one.history("run-1")] == [0, 1]
    await one.close()
    await two.close()


def test_many_processes_may_set_up_a_new_file_at_once(tmp_path: Path) -> None:
    with ThreadPoolExecutor(8) as pool:
        stores = list(pool.map(lambda _: EmbeddedStore(tmp_path / "new.db"), range(8)))
    for store in stores:
        store.connection.close()
    with closing(sqlite3.connect(tmp_path / "new.db")) as raw:
        assert raw.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)


async def test_a_commit_writes_rows_for_the_patch_not_for_the_whole_memory(
    tmp_path: Path,
) -> None:
    store = EmbeddedStore(tmp_path / "store.db")
    await store.create(new_run(**{f"f{i}": "x" * 1000 for i in range(50)}))
    lease = await leased(store, "w1")
    before = store.connection.total_changes
    await store.commit("run-1", expected_seq=0, token=lease.token, event=event(1, n=1, f3="y"))
    assert store.connection.total_changes - before == 5  # runs, 2 memory fields, event, key
    await store.close()


def test_a_file_of_another_schema_version_is_refused_naming_it(tmp_path: Path) -> None:
    db = tmp_path / "store.db"
    with sqlite3.connect(db) as raw:
        raw.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    raw.close()
    name = re.escape(str(db))
    with pytest.raises(StorageError, match=f"{name} has store schema version {SCHEMA_VERSION + 1}"):
        EmbeddedStore(db)


V1_SCHEMA = [  # the first released schema, before deadlines
    """CREATE TABLE runs (
        run_id TEXT PRIMARY KEY, agent TEXT NOT NULL, version INTEGER NOT NULL,
        state TEXT NOT NULL, seq INTEGER NOT NULL, status TEXT NOT NULL,
        created_at REAL NOT NULL, updated_at REAL NOT NULL, fence INTEGER NOT NULL DEFAULT 0,
        holder TEXT NOT NULL DEFAULT '', crashes INTEGER NOT NULL DEFAULT 0,
        lease_owner TEXT NOT NULL DEFAULT '', lease_expires REAL NOT NULL DEFAULT 0)""",
    "CREATE INDEX runs_by_update ON runs (updated_at)",
    "CREATE TABLE memory (run_id TEXT NOT NULL, name TEXT NOT NULL, json TEXT NOT NULL,"
    " PRIMARY KEY (run_id, name)) WITHOUT ROWID",
    "CREATE TABLE events (run_id TEXT NOT NULL, seq INTEGER NOT NULL, json TEXT NOT NULL,"
    " PRIMARY KEY (run_id, seq)) WITHOUT ROWID",
    "CREATE TABLE keys (run_id TEXT NOT NULL, key TEXT NOT NULL, seq INTEGER NOT NULL,"
    " PRIMARY KEY (run_id, key)) WITHOUT ROWID",
    "INSERT INTO runs (run_id, agent, version, state, seq, status, created_at, updated_at)"
    " VALUES ('old', 'tester', 1, 'a', 0, 'running', 1.0, 1.0)",
    "INSERT INTO memory VALUES ('old', 'n', '0')",
    'INSERT INTO events VALUES (\'old\', 0, \'{"seq": 0, "trigger": "start", "kind": "start",'
    ' "source": "", "dest": "a", "status": "running", "key": "old:start"}\')',
    "INSERT INTO keys VALUES ('old', 'old:start', 0)",
    "PRAGMA user_version=1",
]


async def test_a_file_of_schema_version_1_is_upgraded_in_place_keeping_its_runs(
    tmp_path: Path,
) -> None:
    db = tmp_path / "store.db"
    with closing(sqlite3.connect(db)) as raw:
        for statement in V1_SCHEMA:
            raw.execute(statement)
        raw.commit()
    store = EmbeddedStore(db)
    old = await store.load("old")
    assert old is not None and (old.state, old.memory, old.deadline) == ("a", {"n": 0}, None)
    assert await store.due(2e9) == []
    await store.close()
    with closing(sqlite3.connect(db)) as raw:
        assert raw.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)


def test_another_programs_database_is_refused_and_left_alone(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    with sqlite3.connect(db) as raw:
        raw.execute("CREATE TABLE runs (x)")
    raw.close()
    name = re.escape(str(db))
    with pytest.raises(StorageError, match=f"{name} is an SQLite database of something else"):
        EmbeddedStore(db)
    with closing(sqlite3.connect(db)) as raw:
        assert raw.execute("SELECT name FROM sqlite_master").fetchall() == [("runs",)]


def test_a_file_that_is_not_sqlite_is_refused_naming_it(tmp_path: Path) -> None:
    db = tmp_path / "notes.txt"
    db.write_text("not a database, just some notes " * 100)
    name = re.escape(str(db))
    with pytest.raises(StorageError, match=f"cannot open the store {name}: file is not a database"):
        EmbeddedStore(db)


async def test_a_file_locked_too_long_is_unavailable_and_nothing_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("storage.embedded._db._BUSY_TIMEOUT", 0.05)
    db = tmp_path / "store.db"
    store = EmbeddedStore(db)
    await store.create(new_run())
    lease = await leased(store, "w1")
    other = sqlite3.connect(db, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process is writing
    name = re.escape(str(db))
    with pytest.raises(
        StoreUnavailable, match=f"cannot commit to run 'run-1': {name} stayed locked"
    ):
        await store.commit("run-1", expected_seq=0, token=lease.token, event=event(1, n=1))
    run = await store.load("run-1")  # readers are not blocked by a writer
    assert run is not None and run.seq == 0
    other.execute("ROLLBACK")
    other.close()
    out = await store.commit("run-1", expected_seq=0, token=lease.token, event=event(1, n=1))
    assert out == Committed(seq=1)
    await store.close()


async def test_a_closed_store_says_so(tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path / "store.db")
    await store.close()
    with pytest.raises(StorageError, match="cannot load run 'run-1'"):
        await store.load("run-1")


async def test_open_store_picks_the_embedded_store_by_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    relative = open_store("sqlite:///data/rel.db")
    absolute = open_store(f"sqlite:///{tmp_path / 'abs' / 'store.db'}")
    one, two = open_store("memory://"), open_store("memory://")
    assert isinstance(relative, EmbeddedStore) and relative.path == "data/rel.db"
    assert (tmp_path / "data" / "rel.db").exists()
    assert isinstance(absolute, EmbeddedStore) and absolute.path == str(tmp_path / "abs/store.db")
    assert isinstance(one, EmbeddedStore) and isinstance(two, EmbeddedStore)
    await one.create(new_run())
    assert await two.load("run-1") is None  # each memory:// store is its own
    for store in (relative, absolute, one, two):
        await store.close()


def test_the_url_may_ask_for_full_sync_and_nothing_else(tmp_path: Path) -> None:
    full = EmbeddedStore.from_url(f"sqlite:///{tmp_path / 'full.db'}?synchronous=full")
    normal = EmbeddedStore.from_url(f"sqlite:///{tmp_path / 'normal.db'}")
    assert full.connection.execute("PRAGMA synchronous").fetchone() == (2,)
    assert normal.connection.execute("PRAGMA synchronous").fetchone() == (1,)
    assert normal.connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    full.connection.close()
    normal.connection.close()
    with pytest.raises(ValueError, match=r"synchronous=normal\|full"):
        EmbeddedStore.from_url(f"sqlite:///{tmp_path / 'x.db'}?sync=off")
    with pytest.raises(ValueError, match="not an embedded store URL"):
        EmbeddedStore.from_url("sqlite://somehost/x.db")
    with pytest.raises(ValueError, match="not an embedded store URL"):
        EmbeddedStore.from_url("sqlite:///")


async def test_open_store_without_a_url_uses_the_environment_then_the_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AGENTFSM_STORE", "sqlite:///from-env.db")
    chosen = open_store()
    assert isinstance(chosen, EmbeddedStore) and chosen.path == "from-env.db"
    await chosen.close()

    monkeypatch.delenv("AGENTFSM_STORE")
    default = open_store()
    assert isinstance(default, EmbeddedStore) and default.path == ".agentfsm/store.db"
    await default.create(new_run())
    await default.close()
    assert (tmp_path / ".agentfsm" / "store.db").is_file()


async def test_commits_leave_wal_checkpoints_to_a_thread_of_their_own(tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path / "store.db")
    assert store.connection.execute("PRAGMA wal_autocheckpoint").fetchone() == (0,)
    await store.close()


def test_the_checkpoint_thread_checkpoints_when_due(tmp_path: Path) -> None:
    db = tmp_path / "other.db"
    with closing(sqlite3.connect(db)) as raw:
        raw.execute("PRAGMA journal_mode=WAL")
        raw.execute("CREATE TABLE t (x)")
        raw.execute("INSERT INTO t VALUES (1)")
        raw.commit()
        checkpoints = Checkpointer(str(db), every=2)
        checkpoints.due()
        assert checkpoints.done == 0  # not due yet
        checkpoints.due()
        give_up = time.monotonic() + 30
        while checkpoints.done == 0 and time.monotonic() < give_up:  # wait for the thread
            time.sleep(0.01)
        checkpoints.stop()
        assert checkpoints.done == 1


async def test_a_commit_writes_only_the_pages_it_must(tmp_path: Path) -> None:
    # WAL frames are whole pages; the checkpoints are on their own thread, far apart, so the
    # WAL only grows here. A commit that keeps the status writes the run row, the event and
    # the key (no index on updated_at, no status index); one that changes it, also the
    # status index; live items it carries, one page of the live table (no index beside it,
    # no AUTOINCREMENT counter).
    path = tmp_path / "store.db"
    store = EmbeddedStore(path)
    await store.create(new_run())
    lease = await leased(store, "w1")
    page: int = store.connection.execute("PRAGMA page_size").fetchone()[0]

    async def pages_written(seq: int, status: RunStatus, live: int = 0) -> int:
        before = _size(f"{path}-wal")
        e = dataclasses.replace(event(seq), status=status)
        item: JsonValue = {"kind": "started", "seq": seq}
        items = [(seq - 1, item)] * live
        out = await store.commit("run-1", expected_seq=seq - 1, token=lease.token, event=e,
                                 live=items)  # fmt: skip
        assert out
        return (_size(f"{path}-wal") - before) // (page + 24)  # a frame: 24-byte header + page

    assert await pages_written(1, "running") == 3
    assert await pages_written(2, "waiting") == 4
    assert await pages_written(3, "waiting") == 3
    assert await pages_written(4, "waiting", live=2) == 4  # + one page of the live table
    await store.close()


def _size(path: str) -> int:
    return Path(path).stat().st_size
