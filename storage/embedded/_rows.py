"""Rows of runs in the embedded store: a run and its history written at once, and runs read
back in one snapshot (never a torn run) and checked."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any, TypeAlias

from pydantic import JsonValue

from .._codec import dump_event, dump_json, load_json, run_from_fields
from ..base import Event, RunRecord
from ._schema import INSERT_RUN, RUN_COLUMNS, SELECT_RUN
from .usage import add_run_usage, read_run_usage

__all__ = ["RawRun", "decode", "insert_run", "read_checked", "read_runs"]

RawRun: TypeAlias = tuple[tuple[Any, ...], list[tuple[str, Any]], dict[str, str]]
"""A runs row, its (name, json) memory rows and usage fields, as read, not yet checked."""


def insert_run(db: sqlite3.Connection, run: RunRecord, events: Sequence[Event]) -> bool:
    """Insert a run with its memory and events, unless it exists (then write nothing)."""
    inserted = db.execute(
        INSERT_RUN,
        (run.run_id, run.agent, run.version, run.state, run.seq, run.status, run.created_at,
         run.updated_at, run.holder, run.crashes, run.deadline, run.nonce, run.expires_at,
         run.trace),
    )  # fmt: skip
    if inserted.rowcount != 1:  # it exists: write nothing
        return False
    db.executemany(
        "INSERT INTO memory (run_id, name, json) VALUES (?, ?, ?)",
        [
            (run.run_id, name, dump_json(value, f"memory field {name!r}"))
            for name, value in run.memory.items()
        ],
    )
    db.executemany(
        "INSERT INTO events VALUES (?, ?, ?)",
        [(run.run_id, e.seq, dump_event(e)) for e in events],
    )
    db.executemany(
        "INSERT INTO keys VALUES (?, ?, ?)", [(run.run_id, e.key, e.seq) for e in events]
    )
    add_run_usage(db, run.run_id, run.usage)
    return True


def read_checked(
    db: sqlite3.Connection, run_id: str
) -> tuple[list[RawRun], tuple[bool, int, bool]]:
    """The run's rows, and what its history holds (each an index lookup, not a scan)."""
    rows = read_runs(db, f"{SELECT_RUN} WHERE run_id = ?", (run_id,))
    first, last, keys = db.execute(
        "SELECT EXISTS (SELECT 1 FROM events WHERE run_id = ?1 AND seq = 0),"
        " coalesce((SELECT max(seq) FROM events WHERE run_id = ?1), -1),"
        " EXISTS (SELECT 1 FROM keys WHERE run_id = ?1)",
        (run_id,),
    ).fetchone()
    return rows, (bool(first), int(last), bool(keys))


def read_runs(db: sqlite3.Connection, query: str, params: tuple[Any, ...]) -> list[RawRun]:
    """Runs rows, their memory rows and usage totals, in one snapshot: never a torn run."""
    return [
        (row, db.execute(
            "SELECT name, json FROM memory WHERE run_id = ?", (row[0],)
        ).fetchall(), read_run_usage(db, row[0]))
        for row in db.execute(query, params).fetchall()
    ]  # fmt: skip


def decode(raw: RawRun, path: str) -> RunRecord:
    row, memory_rows, usage = raw
    run_id = str(row[0])
    memory: dict[str, JsonValue] = {
        name: load_json(value, f"{path} memory field {name!r} of run {run_id!r}")
        for name, value in memory_rows
    }
    fields = {k: "" if v is None else str(v) for k, v in zip(RUN_COLUMNS, row[1:], strict=True)}
    fields.update(usage)
    return run_from_fields(run_id, fields, memory, f"{path} runs row of run {run_id!r}")
