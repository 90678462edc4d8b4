"""Keyset paging of a Redis store's runs: the run and agent indexes are scored by creation
time; a status filter reads the status index (scored by another time) whole when it is small
and orders it by the creation scores (`ZMSCORE`), else walks the creation-ordered index and
checks each run. A text filter on ids is walked on the server (`scripts/id_search.lua`)."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeAlias

from .._paging import RunCursor
from ..base import RunRecord
from ._errors import talking

if TYPE_CHECKING:
    from ._base import RedisBase

__all__ = ["redis_page"]

_SMALL_STATUS = 5_000
"""A Redis status index up to this size is read whole and ordered by creation time."""
_SEARCH_READS = 20_000
"""Ids one call of `id_search.lua` reads at most: a few milliseconds of the server's time."""


def cursor_of(run: RunRecord) -> RunCursor:
    """The cursor that lists the runs after `run` in a page walk."""
    return (run.created_at, run.run_id)


Matcher: TypeAlias = Callable[[RunRecord], bool]


async def redis_page(
    store: RedisBase,
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
    every = store._by_agent(agent) if agent is not None else f"{store.prefix}:runs"
    client = store.client
    if status is not None:
        index = store._by_status(status)
        async with talking(store, "list runs"):
            size: int = await client.zcard(index)
        if size <= _SMALL_STATUS:
            async with talking(store, "list runs"):
                ids: list[str] = await client.zrange(index, 0, -1)
                scores: list[float | None] = await client.zmscore(every, ids) if ids else []
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
    store: RedisBase,
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
        async with talking(store, "list runs"):
            got: list[tuple[str, float]] = await store.client.zrange(
                index, "+inf" if high == math.inf else high, "-inf", desc=True, byscore=True,
                offset=0, num=batch, withscores=True,
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
    store: RedisBase,
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
    script = store.script("id_search")
    runs: list[RunRecord] = []
    # from the cursor; or every id up to `top` (the top, or an `until` below the cursor)
    cursor = before[0] != math.inf and top >= before[0]
    score, run_id = before if cursor else (top, "")
    while len(runs) < limit:
        want = limit - len(runs)
        args: list[Any] = ["+inf" if score == math.inf else repr(score), int(cursor), run_id,
                           text, want, _SEARCH_READS]  # fmt: skip
        async with talking(store, "search run ids"):
            reply: list[Any] = await script(keys=[index], args=args)
        done, ids = reply[0], reply[3::2]
        runs += await _fill(list(ids), want, matches, load)
        if done or not reply[1]:
            break
        score, run_id, cursor = float(reply[2]), reply[1], True
    return runs
