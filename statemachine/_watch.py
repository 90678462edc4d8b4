"""Watching a run: its committed events from the durable history, merged with its live items.

Offsets order both sources. Committed event N has offset "N"; a live item published while the
run was at seq N (after event N, before N+1) has offset "N:ID", ID being the live channel's
own increasing id. So the order is: event N, the live items of the step that makes N+1 (in
publish order), event N+1, ... A watcher yields items in that order and never one at or
before the last offset it yielded: restarted with `after=` that offset, it misses nothing
still kept and repeats nothing. Committed events come only from the history, so each appears
exactly once and in order whatever the live channel dropped, trimmed or expired; a live item
that reaches the channel after the watcher passed its place (a publish slower than the next
commit) is skipped.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from pydantic import JsonValue

from storage import Event, Store
from storage.base import LiveEntry, live_order

from .errors import RunNotFound

__all__ = ["WatchItem", "offset_key", "watch"]

_Key = tuple[int, int, tuple[int, ...]]
_STOPS_DRIVING = frozenset({"waiting", "done", "failed", "cancelled"})
_ENDS = frozenset({"done", "cancelled"})
_OFFSET = re.compile(r"[0-9]{1,15}(:[0-9]{1,15}(-[0-9]{1,15})*)?")
"""An offset: numbers of at most 15 digits (below 2**53: exact in JSON and JavaScript)."""
_WAIT = 1.0
"""Seconds one look at the live channel waits for news before the history is read again."""


@dataclass(frozen=True, kw_only=True, slots=True)
class WatchItem:
    """One thing that happened in a run.

    `kind` is "committed" (a committed event: `event` is it) or a live item's: "started" (a
    try of a step began: `data` has its trigger), "text" (model text: `data["text"]`),
    "tool_call" (a model's tool-call delta), "tool_started" / "tool_finished" (a tool call
    the model asked for: `data["tool"]`, `data["call_id"]`, `data["ok"]`; a `tool()` step's
    own start is its "started" item, `data["step_kind"] == "tool"`), "failed" (a try failed:
    `data["error"]`, and whether it is retried), "stopped" (the run parked or ended,
    `data["status"]`; only with `follow=True`). `seq` is the commit the item belongs to (the
    step's, for a step's items) and `attempt` the try.
    """

    offset: str
    kind: str
    seq: int
    attempt: int
    data: dict[str, JsonValue] = field(default_factory=dict)
    event: Event | None = None

    @property
    def text(self) -> str:
        """The text of a "text" item ("" for any other)."""
        text = self.data.get("text") if self.kind == "text" else None
        return text if isinstance(text, str) else ""


def offset_key(offset: str | None) -> _Key:
    """The sort key of an offset ("N" or "N:ID"); None sorts before everything. `ValueError`
    for anything else (numbers are ASCII digits, below 2**53)."""
    if offset is None:
        return (-1, 1, ())
    seq, _, live = offset.partition(":")
    try:
        if not _OFFSET.fullmatch(offset):
            raise ValueError
        key = (int(seq), 0, ()) if not live else (int(seq), 1, live_order(live))
    except ValueError:
        shown = offset if len(offset) <= 40 else f"{offset[:40]}... ({len(offset)} characters)"
        raise ValueError(
            f'not a watch offset: {shown!r} ("N" or "N:ID": numbers below 2**53)'
        ) from None
    return key


async def watch(
    store: Store, run_id: str, *, after: str | None = None, follow: bool = False
) -> AsyncIterator[WatchItem]:
    """Everything that happened in run `run_id` after `after` (None: from its start), then
    what happens live, until the run stops being driven (waiting, done, failed, cancelled;
    a stop the history has gone past, such as a retried failure, does not end it);
    with `follow`, on across resumes until it is done or cancelled. `RunNotFound` for an
    unknown run."""
    cursor = offset_key(after)
    # From the channel's start, not from `after`'s id: an item published late (after the
    # next commit) has a larger id than items that sort after it.
    live_after: str | None = None
    record = await store.load(run_id)
    if record is None:
        raise RunNotFound(run_id)
    stops = _ENDS if follow else _STOPS_DRIVING
    status = record.status if record.seq <= cursor[0] else "running"
    first = True
    while True:
        entries = await _live_after(store, run_id, live_after, 0.0 if first else _WAIT)
        first = False
        if entries:
            live_after = entries[-1].id
        events = await store.history(run_id, cursor[0] + 1)
        merged: list[tuple[_Key, WatchItem]] = [(_key(e), _committed(e)) for e in events]
        merged += [(_entry_key(e), _live(e)) for e in entries if _shown(e, follow)]
        merged.sort(key=lambda pair: pair[0])
        for key, item in merged:
            if key <= cursor:
                continue  # yielded before, or a live item that came too late for its place
            cursor = key
            yield item
            if item.event is not None:
                status = item.event.status
                if status in stops and item.event.seq == events[-1].seq:
                    return  # (a stop the history has gone past, say a retried failure: on)
        if status in stops and not events:
            return  # nothing new, and the run is not driven (unless a later commit says so)


async def _live_after(store: Store, run_id: str, after: str | None, wait: float) -> list[LiveEntry]:
    """Every entry after `after` (the first page may leave more: read on at once)."""
    got: list[LiveEntry] = []
    while True:
        page = await store.live(run_id, after, wait=0.0 if got else wait)
        got += page
        if len(page) < 1000:
            return got
        after = page[-1].id


def _shown(entry: LiveEntry, follow: bool) -> bool:
    kind = entry.item.get("kind")
    return kind != "committed" and (follow or kind != "stopped")


def _key(event: Event) -> _Key:
    return (event.seq, 0, ())


def _entry_key(entry: LiveEntry) -> _Key:
    return (entry.base, 1, live_order(entry.id))


def _committed(event: Event) -> WatchItem:
    return WatchItem(
        offset=str(event.seq), kind="committed", seq=event.seq, attempt=event.attempt,
        event=event,
    )  # fmt: skip


def _live(entry: LiveEntry) -> WatchItem:
    item = entry.item
    seq, attempt = item.get("seq"), item.get("attempt")
    return WatchItem(
        offset=f"{entry.base}:{entry.id}",
        kind=str(item.get("kind", "")),
        seq=seq if isinstance(seq, int) else entry.base + 1,
        attempt=attempt if isinstance(attempt, int) else 0,
        data={k: v for k, v in item.items() if k not in ("kind", "seq", "attempt")},
    )
