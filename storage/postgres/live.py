"""Waiting readers of the Postgres store (live items, queued jobs): LISTEN for the writers'
NOTIFY and look again at once, or every `_POLL` seconds without one (a pooler in transaction
mode drops notifications: polling keeps the reader right, notifications make it quick).

Live items are rows of the `live` table numbered per run (`live_heads` keeps each run's last
number; `publish()` in sql/ locks that row first), so one run's ids commit in increasing
order, a reader resuming after an id misses nothing, and a run keeps its newest
`LIVE_MAXLEN` items however many other runs publish."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from .._codec import load_json
from ..base import LiveEntry
from ..errors import CorruptData
from ._connections import Connections

__all__ = ["create_sql", "entry", "live_args", "wait_for"]

T = TypeVar("T")
_POLL = 0.25


def live_args(
    rows: Sequence[tuple[int, str]], maxlen: int, ttl: float, channel: str
) -> tuple[Any, ...]:
    """`append_live`'s arguments after the run id, for rows of `storage._codec.live_rows`."""
    return [base for base, _ in rows], [item.encode() for _, item in rows], maxlen, ttl, channel


def create_sql(schema: str, live: bool) -> str:
    """The statement that creates (and leases) a run: `create_run($1..$17)`; with `live`,
    also `append_live` of the items in $18..$22 (`live_args`), only when it created the run."""
    sql = (
        f"SELECT * FROM {schema}.create_run($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12,"
        " $13, $14, $15, $16, $17)"
    )
    if not live:
        return sql
    return (
        f"SELECT r.* FROM ({sql}) AS r LEFT JOIN LATERAL (SELECT {schema}.append_live($1, $18,"
        " $19, $20, $21, $22) WHERE r.o_inserted) AS l ON true"
    )


async def wait_for(
    db: Connections, channel: str, fetch: Callable[[], Awaitable[list[T]]], wait: float
) -> list[T]:
    """`fetch()`'s rows; when there are none, fetch again on each notification on `channel`
    (or every `_POLL` seconds) until there are some or `wait` seconds passed."""
    rows = await fetch()
    if rows or wait <= 0:
        return rows
    give_up = time.monotonic() + wait
    woke = asyncio.Event()

    def wake(*_: Any) -> None:
        woke.set()

    async with contextlib.AsyncExitStack() as stack:
        try:
            conn = await stack.enter_async_context(db.connection(counted=False))
            await conn.add_listener(channel, wake)
            stack.push_async_callback(_unlisten, conn, channel, wake)
        except Exception:  # no notifications (a pooler, a busy server): poll
            pass
        while True:
            woke.clear()
            rows = await fetch()  # (again once listening: a notification before it is seen)
            left = give_up - time.monotonic()
            if rows or left <= 0:
                return rows
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(woke.wait(), min(left, _POLL))


async def _unlisten(conn: Any, channel: str, wake: Callable[..., None]) -> None:
    with contextlib.suppress(Exception):
        await conn.remove_listener(channel, wake)


def entry(where: str, run_id: str, row_id: object, base: object, raw: object) -> LiveEntry:
    key = f"{where} live item {row_id} of run {run_id!r}"
    item = load_json(bytes(raw), key) if isinstance(raw, bytes | bytearray | memoryview) else None
    if not isinstance(item, dict) or not isinstance(base, int):
        raise CorruptData(key, "not a live item")
    return LiveEntry(id=str(row_id), base=base, item=item)
