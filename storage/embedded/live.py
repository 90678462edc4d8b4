"""A run's live channel in the embedded store: a table beside the events, pruned on publish.

Rows are numbered per run, clustered by (run_id, id) (`WITHOUT ROWID`: an item is one row in
one B-tree, no index or `AUTOINCREMENT` counter beside it, so a commit that carries an item
writes one page more, not three): a new row takes the run's largest id plus one, inside the
write transaction, so ids increase across processes. Ids a reader has seen are never given
again while the run exists, because no prune deletes a run's newest row: a publish keeps the
run's newest `maxlen` rows and drops older rows past `ttl` (at most every 64th commit does);
`prune` (from `gc`) drops every run's old rows but blanks the newest of each instead (a row
readers skip, kept for its id). The rows go with the run when `gc` deletes it.
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

__all__ = ["TABLE", "append", "create_table", "insert", "prune", "read"]

TABLE = (
    "CREATE TABLE IF NOT EXISTS live (run_id TEXT NOT NULL, id INTEGER NOT NULL,"
    " base INTEGER NOT NULL, item TEXT NOT NULL, at REAL NOT NULL, PRIMARY KEY (run_id, id))"
    " WITHOUT ROWID"
)
_INSERT = (
    "INSERT INTO live (run_id, id, base, item, at) VALUES"
    " (?1, (SELECT coalesce(max(id), 0) + 1 FROM live WHERE run_id = ?1), ?2, ?3, ?4)"
)
_BLANK = ""
"""The item of a row kept only for its id (the newest of a run, past its TTL)."""
_POLL = 0.05
"""Seconds between two looks while a reader waits (SQLite cannot notify another process)."""


def create_table(db: sqlite3.Connection) -> None:
    db.execute(TABLE)


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
    if prune:
        _trim(db, run_id, now - ttl, maxlen)


def _trim(db: sqlite3.Connection, run_id: str, cut: float, maxlen: int) -> None:
    """Drop the run's rows before its newest `maxlen` and those older than `cut` (ids and
    times grow together: the old ones are those before the first row at or after `cut`),
    never its newest; each bound is one index lookup, the DELETE a range of the run's rows."""
    newest, fresh = db.execute(
        "SELECT max(id), (SELECT id FROM live WHERE run_id = ?1 AND at >= ?2 ORDER BY id"
        " LIMIT 1) FROM live WHERE run_id = ?1",
        (run_id, cut),
    ).fetchone()
    if newest is None:
        return
    keep = min(newest, max(newest - maxlen + 1, newest if fresh is None else fresh))
    db.execute("DELETE FROM live WHERE run_id = ? AND id < ?", (run_id, keep))


def prune(db: sqlite3.Connection, now: float, ttl: float) -> None:
    """Drop every run's rows older than `ttl`, but blank the newest row of a run instead of
    dropping it, so that the run's next item still gets a larger id (inside the caller's
    write transaction)."""
    cut = now - ttl
    db.execute(
        "DELETE FROM live WHERE at < ?1 AND id < (SELECT max(id) FROM live AS newer"
        " WHERE newer.run_id = live.run_id)",
        (cut,),
    )
    db.execute("UPDATE live SET item = ?1 WHERE at < ?2 AND item != ?1", (_BLANK, cut))


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
            "SELECT id, base, item FROM live WHERE run_id = ? AND id > ? AND item != ?"
            " ORDER BY id LIMIT ?",
            (run_id, start, _BLANK, max(limit, 0)),
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
