"""Keyset paging of the embedded store's runs: indexes on `(created_at, run_id)` and per agent
and per status (created once, on columns a commit does not write, except the status index
when the status changes); a page is one SQL query that walks an index in order."""

from __future__ import annotations

import math
from typing import Any

from .._paging import TOP, RunCursor

__all__ = ["PAGE_INDEXES", "list_query", "page_query"]

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


def list_query(
    select: str,
    *,
    agent: str | None,
    status: str | None,
    state: str | None,
    since: float | None,
    until: float | None,
    limit: int,
    before: RunCursor | None,
    id_contains: str | None,
) -> tuple[str, tuple[Any, ...]]:
    """The SQL of `Store.list_runs`: a keyset page (`page_query`) with `before` or
    `id_contains`, else the most recently updated runs that pass the filters."""
    if before is not None or id_contains is not None:
        return page_query(
            select, agent=agent, status=status, state=state, since=since, until=until,
            before=before or TOP, limit=limit, id_contains=id_contains,
        )  # fmt: skip
    query = (
        f"{select} WHERE (?1 IS NULL OR agent = ?1) AND (?2 IS NULL OR status = ?2)"
        " AND (?3 IS NULL OR state = ?3) AND (?4 IS NULL OR updated_at >= ?4)"
        " AND (?5 IS NULL OR updated_at < ?5) ORDER BY updated_at DESC LIMIT ?6"
    )
    return query, (agent, status, state, since, until, max(min(limit, 2**62), 0))
