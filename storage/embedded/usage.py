"""The usage ledger's run totals in the embedded store: the `run_usage` table, written by the
commit's own transaction (see `storage.usage` for the rule it keeps)."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping

from ..usage import FIELD

__all__ = ["add_run_usage", "create_tables", "read_run_usage"]

_TABLES = [
    """CREATE TABLE IF NOT EXISTS run_usage (
        run_id TEXT NOT NULL, name TEXT NOT NULL, value INTEGER NOT NULL,
        PRIMARY KEY (run_id, name)
    ) WITHOUT ROWID""",
]


def create_tables(db: sqlite3.Connection) -> None:
    """Created `IF NOT EXISTS` when the store opens: no schema version step."""
    for statement in _TABLES:
        db.execute(statement)


def add_run_usage(db: sqlite3.Connection, run_id: str, usage: Mapping[str, int]) -> None:
    """Add `usage` to the run's totals (inside the caller's transaction)."""
    if usage:
        db.executemany(
            "INSERT INTO run_usage (run_id, name, value) VALUES (?, ?, ?)"
            " ON CONFLICT (run_id, name) DO UPDATE SET value = value + excluded.value",
            [(run_id, name, value) for name, value in usage.items()],
        )


def read_run_usage(db: sqlite3.Connection, run_id: str) -> dict[str, str]:
    """The run's totals as decoded fields (`u:<name>` -> text), as a Redis hash has them."""
    rows = db.execute("SELECT name, value FROM run_usage WHERE run_id = ?", (run_id,))
    return {f"{FIELD}{name}": str(value) for name, value in rows}
