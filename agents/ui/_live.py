"""Live updates of a run page: Server-Sent Events fed by the run's live channel.

`changes` follows `statemachine.watch(..., follow=True)`: committed events and, between them,
the live items of the step under way (streamed model text, a try started or failed, tool
calls). The watch runs in a task of its own that feeds a queue; the stream reads the queue
with a timeout, so a quiet run still gets a heartbeat and the watch is never cut off inside
one of its steps. Each SSE id is the item's watch offset, so a browser that reconnects (with
Last-Event-ID) resumes right after the last item it got: nothing missed that is still kept,
nothing twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator, AsyncIterator

from pydantic import JsonValue

from statemachine import RunNotFound
from statemachine.engine import WatchItem, offset_key, watch
from storage import Store

__all__ = ["HEARTBEAT_SECONDS", "changes", "resume_offset", "sse"]

HEARTBEAT_SECONDS = 15.0
"""A comment line this often keeps proxies from closing a quiet stream."""
_STEP_KINDS = frozenset({"started", "failed", "tool_started", "tool_finished", "stopped"})


def resume_offset(asked: str, seq: int) -> str:
    """Where a stream starts: the offset `asked` (a Last-Event-ID or `?after=`; a seq is an
    offset too), or the run's `seq` when none was asked or it lies past the run (a run
    deleted and made again). `ValueError` when `asked` is not an offset."""
    if not asked:
        return str(seq)
    if offset_key(asked)[0] > seq:
        return str(seq)
    return asked


async def changes(
    store: Store, run_id: str, after: str, *, heartbeat: float = HEARTBEAT_SECONDS
) -> AsyncGenerator[WatchItem | None]:
    """What happens in the run after offset `after`; None after each `heartbeat` seconds of
    quiet. Ends when the run is done or cancelled, or gone (deleted or expired)."""
    queue: asyncio.Queue[WatchItem | None] = asyncio.Queue(maxsize=1000)

    async def feed() -> None:
        try:  # cancelled at the end: the CancelledError goes through the watch and ends it
            async for item in watch(store, run_id, after=after, follow=True):
                await queue.put(item)
        except RunNotFound:
            pass
        finally:  # the end (a full queue: the reader sees the feeder is done)
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(None)

    feeder = asyncio.create_task(feed())
    try:
        while True:
            try:
                item = await asyncio.wait_for(queue.get(), heartbeat)
            except TimeoutError:
                if feeder.done() or await store.load(run_id) is None:
                    return
                yield None
                continue
            if item is None:
                return
            yield item
    finally:
        feeder.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await feeder


async def sse(items: AsyncIterator[WatchItem | None]) -> AsyncIterator[str]:
    """`items` as an event stream, each with its offset as the event id: `commit` (seq, state
    and status of a committed event), `token` (a model's text delta, its step's seq and
    attempt), `step` (a try started or failed, a tool call, the run stopped: a short `text`),
    and `end` once the run is over (no need to reconnect)."""
    yield "retry: 1000\n\n"
    async for item in items:
        if item is None:
            yield ": still here\n\n"
            continue
        event = _event(item)
        if event is not None:
            name, data = event
            yield f"id: {item.offset}\nevent: {name}\ndata: {json.dumps(data)}\n\n"
    yield "event: end\ndata: {}\n\n"


def _event(item: WatchItem) -> tuple[str, dict[str, JsonValue]] | None:
    if item.event is not None:
        e = item.event
        return "commit", {"seq": e.seq, "state": e.dest, "status": e.status}
    where: dict[str, JsonValue] = {"seq": item.seq, "attempt": item.attempt}
    if item.kind == "text":
        return "token", {"text": item.text, **where}
    if item.kind in _STEP_KINDS:
        return "step", {"kind": item.kind, "text": _step_text(item), **where}
    return None  # a tool call's argument deltas: too fine for the page


def _step_text(item: WatchItem) -> str:
    data = item.data
    if item.kind == "started":
        return f"seq {item.seq} try {item.attempt}: {data.get('trigger', '')} started"
    if item.kind == "failed":
        error = data.get("error")
        why = f"{error.get('type')}: {error.get('message')}" if isinstance(error, dict) else ""
        again = ", retrying" if data.get("retrying") else ""
        return f"seq {item.seq} try {item.attempt} failed{again}: {why[:200]}"
    if item.kind in ("tool_started", "tool_finished"):
        verb = "calls" if item.kind == "tool_started" else "finished"
        ok = "" if item.kind == "tool_started" or data.get("ok", True) else " (error)"
        return f"seq {item.seq}: {verb} tool {data.get('tool', '')}{ok}"
    return f"run {data.get('status', 'stopped')}"
