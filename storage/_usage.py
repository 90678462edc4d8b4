"""The usage ledger: a run's running totals of what its steps paid for, kept by the commit.

Every committed event may carry `usage` (model requests, input/output/cache tokens, tool
calls, cost in nano-USD: integers only, so the totals are exact sums). The commit that
records the event adds its usage to the run's totals in the same atomic write (Redis: one
`HINCRBY` per figure on the run hash fields `u:<name>` in `commit.lua`; embedded: the
`run_usage` table, in the commit's transaction), so after any crash

    run.usage == sum of event.usage over the run's committed events

An error event carries what its failed tries paid, so those are counted too; a try cut short
by a crash recorded nothing and is not counted (nothing knows what it cost).

The embedded tables are created `IF NOT EXISTS` when the store opens (`create_tables`): no
schema version step.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping

from .base import Event

__all__ = [
    "COST_UNIT",
    "FIELD",
    "add_run_usage",
    "added",
    "create_tables",
    "increments",
    "lua_increments",
    "read_run_usage",
]

FIELD = "u:"
"""The prefix of usage fields in a run's Redis hash (and of usage keys in decoded fields)."""
COST_UNIT = 1e-9
"""`cost_nusd` counts nano-US dollars: 1_000_000_000 is one dollar."""

_TABLES = [
    """CREATE TABLE IF NOT EXISTS run_usage (
        run_id TEXT NOT NULL, name TEXT NOT NULL, value INTEGER NOT NULL,
        PRIMARY KEY (run_id, name)
    ) WITHOUT ROWID""",
]


def increments(event: Event) -> dict[str, int]:
    """What `event` adds to its run's totals: its non-zero usage figures."""
    return {name: int(v) for name, v in (event.usage or {}).items() if v}


def added(totals: Mapping[str, int], usage: Mapping[str, int] | None) -> dict[str, int]:
    """`totals` with `usage` added, figure by figure (a new dict)."""
    out = dict(totals)
    for name, value in (usage or {}).items():
        if value:
            out[name] = out.get(name, 0) + int(value)
    return out


def lua_increments(event: Event) -> str:
    """The event's increments as `commit.lua` takes them: "name\\nvalue\\n..."."""
    return "".join(f"{name}\n{value}\n" for name, value in increments(event).items())


def create_tables(db: sqlite3.Connection) -> None:
    """The embedded store's tables beside the runs: their totals, and those of `_ledger`
    and `_ratelimit`."""
    from ._ledger import create_tables as ledger_tables
    from ._ratelimit import create_tables as rate_tables

    for statement in _TABLES:
        db.execute(statement)
    ledger_tables(db)
    rate_tables(db)


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
