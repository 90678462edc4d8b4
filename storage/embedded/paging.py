"""Keyset paging of the embedded store's runs: indexes on `(created_at, run_id)` and per agent
and per status (created once, on columns a commit does not write, except the status index
when the status changes); a page is one SQL query that walks an index in order."""

from __future__ import annotations

import math
from typing import Any

from .._paging import RunCursor

__all__ = ["PAGE_INDEXES", "page_query"]

PAGE_INDEXES = [
    "CREATE INDEX IF NOT EXISTS runs_page ON runs (created_at, run_id)",
    "CREATE INDEX IF NOT EXISTS runs_page_by_agent ON runs (agent, created_at, run_id)",
    "CREATE INDEX IF NOT EXISTS runs_page_by_status ON runs (status, created_at, run_id)",
    # These two serve every lookup the schema's `(agent)` and `(status)` indexes served, so
    # those go: a commit that changes the status still writes one status index, not two.
    "DROP INDEX IF EXISTS runs_by_agent",
    "DROP INDEX IF EXISTS runs_by_status",
]
"""Run when an embedded store opens (`IF [NOT] EXISTS`: files made by any version get them;
a version without them still reads the file, unindexed by agent and status)."""


def page_query(
    select: str,
    *,
    agent: str | None,
    status: str | None,
    state: str | None,
    since: float | None,
    until: float | None,
    before: RunCursor,
    limit: int,
    id_contains: str | None = None,
) -> tuple[str, tuple[Any, ...]]:
    """The embedded store's SQL for one page: only the filters given, so SQLite can walk an
    index in order and stop after `limit` rows."""
    where = ["(created_at, run_id) < (?, ?)"]
    params: list[Any] = [_sql_float(before[0]), before[1]]
    for column, op, value in (
        ("agent", "=", agent),
        ("status", "=", status),
        ("state", "=", state),
        ("updated_at", ">=", since),
        ("updated_at", "<", until),
    ):
        if value is not None:
            where.append(f"{column} {op} ?")
            params.append(value)
    if id_contains is not None:  # read from the index itself: rows are fetched for matches
        where.append("instr(run_id, ?) > 0")
        params.append(id_contains)
    if until is not None:  # created_at <= updated_at < until: lets the index start lower
        where.append("created_at < ?")
        params.append(until)
    query = f"{select} WHERE {' AND '.join(where)} ORDER BY created_at DESC, run_id DESC LIMIT ?"
    return query, (*params, max(min(limit, 2**62), 0))


def _sql_float(value: float) -> float:
    return 1e308 if value == math.inf else value
