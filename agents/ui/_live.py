"""Live updates of a run page: Server-Sent Events, one per commit of the run.

`commits` is the one place that knows where changes come from. Today it polls the store
(`Store.load`, a single read per tick); when the per-run live channel (`run.watch(...)`,
DESIGN.md §8) lands, it becomes a loop over that channel's items and nothing else changes.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from storage import RunRecord, Store

__all__ = ["POLL_SECONDS", "commits", "sse"]

POLL_SECONDS = 0.5
HEARTBEAT_SECONDS = 15.0
"""A comment line this often keeps proxies from closing a quiet stream."""


async def commits(
    store: Store, run_id: str, after: int, *, every: float = POLL_SECONDS
) -> AsyncIterator[RunRecord | None]:
    """The run each time it has committed past seq `after`; None now and then when nothing
    happened (for a heartbeat). Ends when the run is gone (deleted or expired)."""
    seen = after
    quiet = 0.0
    while True:
        record = await store.load(run_id)
        if record is None:
            return
        if record.seq != seen:  # forward, or back to 0 for a run deleted and made again
            seen = record.seq
            quiet = 0.0
            yield record
        else:
            quiet += every
            if quiet >= HEARTBEAT_SECONDS:
                quiet = 0.0
                yield None
        await asyncio.sleep(every)


async def sse(changes: AsyncIterator[RunRecord | None]) -> AsyncIterator[str]:
    """`changes` as an event stream: `event: commit` with the run's seq, state and status;
    the seq is the event id, so a browser that reconnects resumes from it."""
    yield "retry: 1000\n\n"
    async for record in changes:
        if record is None:
            yield ": still here\n\n"
            continue
        data = json.dumps({"seq": record.seq, "state": record.state, "status": record.status})
        yield f"id: {record.seq}\nevent: commit\ndata: {data}\n\n"
