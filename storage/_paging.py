"""Keyset paging of run listings (`Store.list_runs(before=...)`): the cursor every backend
walks by.

A page walk orders runs by `(created_at, run_id)`, newest first: a key that never changes, so a
walk neither skips nor repeats a run that commits while someone pages (`updated_at` would move
it between pages). Each page starts below the last run of the page before — no offsets, so a
deep page costs what the first one does. Each backend pages its own way
(`storage/embedded/paging.py`, `storage/redis/paging.py`).
"""

from __future__ import annotations

import math
from typing import TypeAlias

from .base import RunRecord

__all__ = ["TOP", "RunCursor", "cursor_of", "matches"]

RunCursor: TypeAlias = tuple[float, str]
"""`(created_at, run_id)` of the last run of a page; `(math.inf, "")` starts at the newest."""
TOP: RunCursor = (math.inf, "")
"""The cursor of the first page."""


def cursor_of(run: RunRecord) -> RunCursor:
    """The cursor that lists the runs after `run` in a page walk."""
    return (run.created_at, run.run_id)


def matches(
    run: RunRecord,
    agent: str | None,
    status: str | None,
    state: str | None,
    since: float | None,
    until: float | None,
) -> bool:
    """Whether `run` passes `list_runs`'s filters."""
    return (
        (agent is None or run.agent == agent)
        and (status is None or run.status == status)
        and (state is None or run.state == state)
        and (since is None or run.updated_at >= since)
        and (until is None or run.updated_at < until)
    )
