"""Publishing a run's progress on its live channel, beside (never inside) its commits.

The runner calls `Publisher` at a step's start, a failed try and a commit; a step streams
through the `StepLive` its context carries. Every call only queues an item: one background
task per run sends what has queued up in one `Store.publish` (one round trip, however many
items) at most every `BATCH_WINDOW` seconds, so a commit never waits for a publish, a run of
quick steps costs about one publish per window rather than one per step, and a publish that
fails is dropped (logged at debug level): the live channel is best effort, the durable history
is what counts. Text deltas queued together are merged into one item.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from pydantic import JsonValue

if TYPE_CHECKING:
    from storage import Event, Store

__all__ = ["NO_LIVE", "Publisher", "StepLive"]

_log = logging.getLogger("statemachine.live")
_DRAIN_WAIT = 2.0
"""Seconds `drain` waits for the last publish, at most."""
BATCH_WINDOW = 0.02
"""Seconds the sender gathers items before it publishes them (`drain` cuts it short)."""


class Publisher:
    """The live channel of one run, as this process writes it."""

    def __init__(self, store: Store, run_id: str) -> None:
        self._store = store
        self._run_id = run_id
        self._queue: list[tuple[int, dict[str, JsonValue]]] = []
        self._sender: asyncio.Task[None] | None = None
        self._now: asyncio.Event | None = None
        """Set to send at once (one per sender task: an event belongs to one event loop)."""

    def emit(self, base: int, item: dict[str, JsonValue]) -> None:
        """Queue `item`, published after committed event `base` (see `storage.base.LiveEntry`)."""
        queue = self._queue
        if item.get("kind") == "text" and queue:
            last_base, last = queue[-1]
            if (
                last_base == base
                and last.get("kind") == "text"
                and last.get("attempt") == item.get("attempt")
                and last.get("part") == item.get("part")
            ):
                queue[-1] = (base, {**last, "text": f"{last['text']}{item['text']}"})
                return
        queue.append((base, item))
        if self._sender is None or self._sender.done():
            try:
                loop = asyncio.get_running_loop()
                now = self._now = asyncio.Event()
                self._sender = loop.create_task(self._send(now))
            except RuntimeError:  # no loop (a step called from sync code): nothing to send on
                queue.clear()

    def started(self, base: int, trigger: str, attempt: int, kind: str, step: str) -> None:
        self.emit(base, _started(base, trigger, attempt, kind, step))

    async def started_now(
        self, base: int, trigger: str, attempt: int, kind: str, step: str
    ) -> None:
        """`started`, stored before this returns (what was queued before goes first); the
        store's error is raised: the runner counts deaths by it (`_crashes.deaths_in_step`)."""
        await self.drain()
        queued, self._queue = self._queue, []
        item = _started(base, trigger, attempt, kind, step)
        await self._store.publish(self._run_id, [*queued, (base, item)])

    def failed(self, base: int, attempt: int, error: BaseException, again: bool) -> None:
        self.emit(base, {"kind": "failed", "seq": base + 1, "attempt": attempt,
                         "error": {"type": type(error).__name__, "message": str(error)},
                         "retrying": again})  # fmt: skip

    def committed(self, event: Event) -> None:
        """A notice (the event itself is read from the history) and, when the run stops
        being driven, the item saying it parked or ended."""
        self.emit(event.seq, {"kind": "committed", "seq": event.seq, "attempt": event.attempt,
                              "status": event.status})  # fmt: skip
        if event.status != "running":
            self.emit(event.seq, {"kind": "stopped", "seq": event.seq,
                                  "attempt": event.attempt, "status": event.status})  # fmt: skip

    def step(self, base: int, attempt: int) -> StepLive:
        return StepLive(self, base, attempt)

    async def drain(self) -> None:
        """Send what was queued now, and wait (a little, at most) until it is sent."""
        if self._now is not None:
            self._now.set()
        while self._sender is not None and not self._sender.done():
            try:
                await asyncio.wait_for(asyncio.shield(self._sender), _DRAIN_WAIT)
            except TimeoutError:
                return

    async def _send(self, now: asyncio.Event) -> None:
        while self._queue:
            if not now.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(now.wait(), BATCH_WINDOW)
            now.clear()
            batch, self._queue = self._queue, []
            try:
                await self._store.publish(self._run_id, batch)
            except Exception as exc:
                _log.debug("run %s: %d live items dropped: %s", self._run_id, len(batch), exc)


def _started(base: int, trigger: str, attempt: int, kind: str, step: str) -> dict[str, JsonValue]:
    return {"kind": "started", "seq": base + 1, "attempt": attempt, "trigger": trigger,
            "step_kind": kind, "step": step}  # fmt: skip


class StepLive:
    """What a step streams to its run's live channel: items tagged with its seq and try."""

    __slots__ = ("_attempt", "_base", "_publisher")

    def __init__(self, publisher: Publisher | None, base: int, attempt: int) -> None:
        self._publisher = publisher
        self._base = base
        self._attempt = attempt

    @property
    def on(self) -> bool:
        """False for a step run outside a `Run` (a rehearsal, a test): nothing is sent."""
        return self._publisher is not None

    def emit(self, kind: str, **data: JsonValue) -> None:
        """Queue one item of `kind` ("text" with `text` and `part` merges with the text
        queued just before it)."""
        if self._publisher is not None:
            item: dict[str, JsonValue] = {"kind": kind, "seq": self._base + 1,
                                          "attempt": self._attempt}  # fmt: skip
            item.update(data)
            self._publisher.emit(self._base, item)

    async def drain(self) -> None:
        """Wait until what this step emitted is published (a streaming step calls this
        before it returns, so a watcher gets its last tokens before the commit)."""
        if self._publisher is not None:
            await self._publisher.drain()


NO_LIVE = StepLive(None, 0, 0)
