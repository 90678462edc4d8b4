"""The embedded store's live table and WAL upkeep: ids a reader has seen are never given
again for the run (trims, TTL prunes, an upgrade from the table numbered by AUTOINCREMENT),
and a writer that never pauses does not grow the WAL file without end."""

from __future__ import annotations

import dataclasses
import os
import sqlite3
import time
from contextlib import closing
from pathlib import Path

from pydantic import JsonValue

from storage import EmbeddedStore
from storage.base import live_order
from storage.embedded import SCHEMA_VERSION
from storage.embedded._checkpoint import Checkpointer

from .conformance.test_runs import event, new_run
from .test_embedded import leased


async def newest_id(store: EmbeddedStore, run_id: str = "run-1") -> tuple[int, ...]:
    got = await store.live(run_id)
    return live_order(got[-1].id)


async def test_ids_never_go_back_after_trims_and_ttl_prunes(tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path / "store.db")
    await store.create(new_run())
    store.live_maxlen = 3
    for n in range(10):  # each publish trims the run to its newest 3
        await store.publish("run-1", [(0, {"n": n})])
    got = await store.live("run-1")
    assert [e.item["n"] for e in got] == [7, 8, 9]
    seen = live_order(got[-1].id)
    await store.gc(time.time() + 2 * store.live_ttl)  # every item is past its TTL
    assert await store.live("run-1") == []  # the newest is kept blank, for its id alone
    await store.publish("run-1", [(0, {"n": 10})])
    after = await store.live("run-1", got[-1].id)
    assert [e.item["n"] for e in after] == [10] and live_order(after[0].id) > seen
    await store.close()


async def test_a_commit_numbers_its_items_after_the_runs_and_each_run_apart(
    tmp_path: Path,
) -> None:
    store = EmbeddedStore(tmp_path / "store.db")
    await store.create(new_run())
    await store.create(new_run(run_id="run-2"))
    await store.publish("run-2", [(0, {"kind": "other"})] * 5)
    await store.publish("run-1", [(0, {"kind": "a"})])
    lease = await leased(store, "w1")
    item: JsonValue = {"kind": "started", "seq": 1}
    out = await store.commit("run-1", expected_seq=0, token=lease.token, event=event(1),
                             live=[(0, item), (0, item)])  # fmt: skip
    assert out
    ids = [live_order(e.id) for e in await store.live("run-1")]
    assert ids == sorted(ids) and len(set(ids)) == 3
    await store.close()


async def test_a_run_deleted_by_gc_takes_its_items_along(tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path / "store.db")
    await store.create(dataclasses.replace(new_run(), expires_at=1.0))
    await store.publish("run-1", [(0, {"kind": "a"})])
    assert await store.gc(2.0) == 1
    rows = store.connection.execute("SELECT count(*) FROM live").fetchone()
    assert rows == (0,)
    await store.close()


V6_LIVE = [
    "CREATE TABLE live (id INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL,"
    " base INTEGER NOT NULL, item TEXT NOT NULL, at REAL NOT NULL)",
    "CREATE INDEX live_by_run ON live (run_id, id)",
    "INSERT INTO live (run_id, base, item, at) VALUES ('run-1', 0, '{\"n\": 1}', 1e12)",
    "INSERT INTO live (run_id, base, item, at) VALUES ('run-2', 0, '{\"n\": 2}', 1e12)",
    "INSERT INTO live (run_id, base, item, at) VALUES ('run-1', 0, '{\"n\": 3}', 1e12)",
    "PRAGMA user_version=6",
]


async def test_a_version_6_file_keeps_its_items_and_their_ids(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    store = EmbeddedStore(path)
    await store.create(new_run())
    await store.close()
    with closing(sqlite3.connect(path)) as raw:  # the live table as version 6 made it
        raw.execute("DROP TABLE live")
        for statement in V6_LIVE:
            raw.execute(statement)
        raw.commit()
    again = EmbeddedStore(path)
    got = await again.live("run-1")
    assert [(e.id, e.item) for e in got] == [("1", {"n": 1}), ("3", {"n": 3})]
    await again.publish("run-1", [(0, {"n": 4})])
    assert await newest_id(again) == (4,)
    await again.close()
    with closing(sqlite3.connect(path)) as raw:
        assert raw.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        (sql,) = raw.execute("SELECT sql FROM sqlite_master WHERE name = 'live'").fetchone()
        assert "WITHOUT ROWID" in sql


def test_a_writer_that_never_pauses_gets_its_wal_file_started_over(tmp_path: Path) -> None:
    db = tmp_path / "busy.db"
    with closing(sqlite3.connect(db, isolation_level=None)) as raw:
        raw.execute("PRAGMA journal_mode=WAL")
        raw.execute("PRAGMA wal_autocheckpoint=0")  # as the store's connection
        raw.execute("CREATE TABLE t (x TEXT)")
        checkpoints = Checkpointer(str(db), every=20, restart_frames=50)
        commits = 0

        def commit() -> None:
            nonlocal commits
            raw.execute("INSERT INTO t VALUES (?)", ("x" * 3000,))
            checkpoints.due()
            commits += 1

        try:
            give_up = time.monotonic() + 60
            while checkpoints.restarts == 0 and time.monotonic() < give_up:
                commit()
            assert checkpoints.restarts > 0
            frames = os.path.getsize(f"{db}-wal") // 4096
            for _ in range(commits // 4):  # 2-3 frames each (a leaf, the root): fits
                commit()
            assert os.path.getsize(f"{db}-wal") // 4096 == frames  # written from its start
        finally:
            checkpoints.stop()
