"""`RunRecord.trace` (the run's traceparent) is written at create, read back by every path
(load, list, restore, export and import between stores), and survives the embedded store's
upgrade from schema version 5 (which had no column for it: runs of such a file read "")."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from dataclasses import replace
from pathlib import Path

from storage import EmbeddedStore, RunRecord, Store, open_store
from storage.backup import export_runs, import_runs
from storage.embedded import SCHEMA_VERSION

TRACE = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def record(run_id: str, trace: str = TRACE) -> RunRecord:
    return RunRecord(
        run_id=run_id, agent="tracer", version=1, state="a", seq=0, status="running",
        memory={"n": 1}, created_at=1.0, updated_at=1.0, nonce="abc", trace=trace,
    )  # fmt: skip


async def test_the_trace_is_stored_with_the_run_and_read_back_everywhere(store: Store) -> None:
    created = await store.create(record("t-1"))
    assert created.trace == TRACE
    loaded = await store.load("t-1")
    assert loaded is not None and loaded.trace == TRACE
    assert [r.trace for r in await store.list_runs(agent="tracer")] == [TRACE]
    again = await store.create(record("t-1", trace="00-" + "1" * 32 + "-" + "2" * 16 + "-01"))
    assert again.trace == TRACE  # the run made first keeps its trace

    await store.create(record("t-old", trace=""))  # a run made before traces
    old = await store.load("t-old")
    assert old is not None and old.trace == ""

    history = await store.history("t-1")
    assert await store.restore(replace(loaded, run_id="t-2"), [replace(history[0])])
    restored = await store.load("t-2")
    assert restored is not None and restored.trace == TRACE


async def test_export_and_import_carry_the_trace(store: Store) -> None:
    source = open_store("memory://")
    await source.create(record("t-3"))
    lines = [line async for line in export_runs(source, ["t-3"])]
    await source.close()
    result = await import_runs(store, lines)
    assert result.imported == ["t-3"]
    imported = await store.load("t-3")
    assert imported is not None and imported.trace == TRACE


async def test_a_schema_5_file_is_upgraded_and_its_runs_read_no_trace(tmp_path: Path) -> None:
    db = tmp_path / "store.db"
    store = EmbeddedStore(db)
    await store.create(record("before"))
    await store.close()
    with closing(sqlite3.connect(db)) as raw:  # make it the file an agentfsm of v5 wrote
        raw.execute("ALTER TABLE runs DROP COLUMN trace")
        raw.execute("PRAGMA user_version=5")
        raw.commit()
    store = EmbeddedStore(db)
    before = await store.load("before")
    assert before is not None and (before.trace, before.memory) == ("", {"n": 1})
    await store.create(record("after"))
    after = await store.load("after")
    assert after is not None and after.trace == TRACE
    await store.close()
    with closing(sqlite3.connect(db)) as raw:
        assert raw.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,) == (7,)
