"""A run's live channel in the embedded store: a table beside the events, pruned on publish.

Rows are numbered by SQLite (`AUTOINCREMENT`: never reused, increasing across processes), so
a row's number is its live id. Each publish keeps the run's newest `maxlen` rows and drops
rows older than `ttl`; `prune` drops every run's old rows (from `gc`).
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Sequence

from pydantic import JsonValue

from .._codec import dump_json, live_rows, load_json
from ..base import LiveEntry
from ..errors import CorruptData

__all__ = ["append", "create_table", "insert", "prune", "read"]

_INSERT = "INSERT INTO live (run_id, base, item, at) VALUES (?, ?, ?, ?)"
_POLL = 0.05
"""Seconds between two looks while a reader waits (SQLite cannot notify another process)."""


def create_table(db: sqlite3.Connection) -> None:
    db.execute(
        "CREATE TABLE IF NOT EXISTS live (id INTEGER PRIMARY KEY AUTOINCREMENT,"
        " run_id TEXT NOT NULL, base INTEGER NOT NULL, item TEXT NOT NULL, at REAL NOT NULL)"
    )
    db.execute("CREATE INDEX IF NOT EXISTS live_by_run ON live (run_id, id)")


def insert(
    db: sqlite3.Connection,
    run_id: str,
    entries: Sequence[tuple[int, JsonValue]],
    maxlen: int,
    ttl: float,
) -> None:
    """Inside the caller's write transaction (a publish)."""
    append(db, run_id, entries, maxlen, ttl, prune=True)


def append(
    db: sqlite3.Connection,
    run_id: str,
    entries: Sequence[tuple[int, JsonValue]],
    maxlen: int,
    ttl: float,
    *,
    prune: bool,
    lenient: bool = False,
) -> None:
    """Inside the caller's write transaction; `prune`: drop the run's rows past `maxlen` and
    older than `ttl` too (a commit prunes every 64th seq: its channel then holds at most
    `maxlen` rows plus what 64 commits add, and a commit pays for no DELETE)."""
    now = time.time()
    if lenient:  # a commit's: an item that cannot be stored is dropped, never fails it
        rows = [(run_id, base, item, now) for base, item in live_rows(entries, run_id)]
    else:
        rows = [(run_id, base, dump_json(item), now) for base, item in entries]
    if len(rows) == 1:  # a commit's usual one: execute is cheaper than executemany
        db.execute(_INSERT, rows[0])
    elif rows:
        db.executemany(_INSERT, rows)
    if not prune:
        return
    db.execute(
        "DELETE FROM live WHERE run_id = ? AND (at < ? OR id <= (SELECT max(id) FROM live"
        " WHERE run_id = ?) - ?)",
        (run_id, now - ttl, run_id, maxlen),
    )  # ids are global, so a run keeps at most `maxlen` rows (fewer when others interleave)


def prune(db: sqlite3.Connection, now: float, ttl: float) -> None:
    """Inside the caller's write transaction."""
    db.execute("DELETE FROM live WHERE at < ?", (now - ttl,))


async def read(
    fetch: Callable[[str, tuple[object, ...]], list[tuple[object, ...]]],
    run_id: str,
    after: str | None,
    wait: float,
    limit: int,
) -> list[LiveEntry]:
    """`fetch` runs one query in a read transaction of the store."""
    give_up = time.monotonic() + wait
    start = -1 if after is None else int(after)
    while True:
        rows = fetch(
            "SELECT id, base, item FROM live WHERE run_id = ? AND id > ? ORDER BY id LIMIT ?",
            (run_id, start, max(limit, 0)),
        )
        if rows or time.monotonic() >= give_up:
            return [_entry(run_id, *row) for row in rows]
        await asyncio.sleep(_POLL)


def _entry(run_id: str, row_id: object, base: object, raw: object) -> LiveEntry:
    where = f"live item {row_id} of run {run_id!r}"
    item = load_json(str(raw), where)
    if not isinstance(item, dict) or not isinstance(base, int):
        raise CorruptData(where, "not a live item")
    return LiveEntry(id=str(row_id), base=base, item=item)
