"""Keyset paging of run listings (`Store.list_runs(before=...)`), for both backends.

A page walk orders runs by `(created_at, run_id)`, newest first: a key that never changes, so a
walk neither skips nor repeats a run that commits while someone pages (`updated_at` would move
it between pages). Each page starts below the last run of the page before — no offsets, so a
deep page costs what the first one does.

- Embedded: indexes on `(created_at, run_id)` and per agent and per status (created once, on
  columns a commit does not write, except the status index when the status changes).
- Redis: the run and agent indexes are already scored by creation time; a status filter reads
  the status index (scored by another time) whole when it is small and orders it by the
  creation scores (`ZMSCORE`), else walks the creation-ordered index and checks each run.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Sequence
from importlib.resources import files
from typing import TYPE_CHECKING, Any, TypeAlias

from .base import RunRecord

if TYPE_CHECKING:
    from .redis import RedisStore

__all__ = ["PAGE_INDEXES", "TOP", "RunCursor", "cursor_of", "page_query", "redis_page"]

RunCursor: TypeAlias = tuple[float, str]
"""`(created_at, run_id)` of the last run of a page; `(math.inf, "")` starts at the newest."""
TOP: RunCursor = (math.inf, "")
"""The cursor of the first page."""

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

_SMALL_STATUS = 5_000
"""A Redis status index up to this size is read whole and ordered by creation time."""
_SEARCH_READS = 20_000
"""Ids one call of `id_search.lua` reads at most: a few milliseconds of the server's time."""
_ID_SEARCH = files(__package__).joinpath("id_search.lua").read_text(encoding="utf-8")


def cursor_of(run: RunRecord) -> RunCursor:
    """The cursor that lists the runs after `run` in a page walk."""
    return (run.created_at, run.run_id)


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


Matcher: TypeAlias = Callable[[RunRecord], bool]


async def redis_page(
    store: RedisStore,
    *,
    agent: str | None,
    status: str | None,
    until: float | None,
    before: RunCursor,
    limit: int,
    matches: Matcher,
    load: Callable[[Sequence[str]], Awaitable[list[RunRecord | None]]],
    id_contains: str | None = None,
) -> list[RunRecord]:
    """One page of a Redis store's runs below `before`, each checked by `matches`; ids
    without `id_contains` are dropped before their runs are read."""
    if limit <= 0:
        return []
    top = min(before[0], until) if until is not None else before[0]
    every = store._by_agent(agent) if agent is not None else f"{store._prefix}:runs"
    client = store._client
    if status is not None:
        index = store._by_status(status)
        size: int = await store._call("list runs", lambda: client.zcard(index))
        if size <= _SMALL_STATUS:
            ids: list[str] = await store._call(
                "list runs",
                lambda: client.zrange(index, 0, -1),
            )
            scores: list[float | None] = (
                await store._call("list runs", lambda: client.zmscore(every, ids)) if ids else []
            )
            ordered = sorted(
                (
                    (score, run_id)
                    for run_id, score in zip(ids, scores, strict=True)
                    if score is not None
                    and (score, run_id) < before
                    and score <= top
                    and (id_contains is None or id_contains in run_id)
                ),
                reverse=True,
            )
            return await _fill([run_id for _, run_id in ordered], limit, matches, load)
    return await _walk(store, every, top, before, limit, matches, load, id_contains)


async def _fill(
    ids: list[str],
    limit: int,
    matches: Matcher,
    load: Callable[[Sequence[str]], Awaitable[list[RunRecord | None]]],
) -> list[RunRecord]:
    """The first `limit` runs of `ids` that match, loaded a chunk at a time: the first chunk
    is what is missing (most runs match), later ones larger."""
    runs: list[RunRecord] = []
    start, chunk = 0, max(limit, 10)
    while start < len(ids) and len(runs) < limit:
        for run in await load(ids[start : start + chunk]):
            if run is not None and matches(run):
                runs.append(run)
                if len(runs) == limit:
                    break
        start += chunk
        chunk = min(chunk * 2, 1000)
    return runs


async def _walk(
    store: RedisStore,
    index: str,
    top: float,
    before: RunCursor,
    limit: int,
    matches: Matcher,
    load: Callable[[Sequence[str]], Awaitable[list[RunRecord | None]]],
    id_contains: str | None,
) -> list[RunRecord]:
    """Walk `index` (scored by creation time) down from `top`, a batch at a time (with a
    text filter, the server walks it: `_search`)."""
    if id_contains is not None:
        return await _search(store, index, top, before, limit, matches, load, id_contains)
    runs: list[RunRecord] = []
    cursor = before
    high = top
    batch = max(limit * 2, 100)
    while len(runs) < limit:
        got: list[tuple[str, float]] = await store._call(
            "list runs",
            lambda h=high, n=batch: store._client.zrange(  # type: ignore[misc]
                index, "+inf" if h == math.inf else h, "-inf", desc=True, byscore=True,
                offset=0, num=n, withscores=True,
            ),
        )  # fmt: skip
        fresh = [(score, run_id) for run_id, score in got if (score, run_id) < cursor]
        if not fresh:
            if len(got) < batch:
                break  # the index is walked to its end
            batch *= 2  # a batch of one creation time's ties, all seen: read more of them
            continue
        runs += await _fill([i for _, i in fresh], limit - len(runs), matches, load)
        cursor = fresh[-1]
        high = cursor[0]
        if len(got) < batch:
            break
    return runs


async def _search(
    store: RedisStore,
    index: str,
    top: float,
    before: RunCursor,
    limit: int,
    matches: Matcher,
    load: Callable[[Sequence[str]], Awaitable[list[RunRecord | None]]],
    text: str,
) -> list[RunRecord]:
    """The walk of a text filter: `id_search.lua` reads the index on the server, up to
    `_SEARCH_READS` ids a call, and sends back only the ids that hold `text`."""
    script = store._client.register_script(_ID_SEARCH)
    runs: list[RunRecord] = []
    # from the cursor; or every id up to `top` (the top, or an `until` below the cursor)
    cursor = before[0] != math.inf and top >= before[0]
    score, run_id = before if cursor else (top, "")
    while len(runs) < limit:
        want = limit - len(runs)
        args = ["+inf" if score == math.inf else repr(score), int(cursor), run_id, text, want,
                _SEARCH_READS]  # fmt: skip
        reply: list[Any] = await store._call(
            "search run ids",
            lambda a=args: script(keys=[index], args=a),  # type: ignore[misc]
        )
        done, ids = reply[0], reply[3::2]
        runs += await _fill(list(ids), want, matches, load)
        if done or not reply[1]:
            break
        score, run_id, cursor = float(reply[2]), reply[1], True
    return runs
