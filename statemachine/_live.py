"""Publishing a run's progress on its live channel: with its commits, or beside them.

The runner calls `Publisher` at a step's start and at a failed try; a step streams through
the `StepLive` its context carries. Every call only queues an item. Each commit takes what
is queued (`take`) and writes it, with its own notice (`notices`: "stopped" when the run
stops being driven, else "committed" if nothing else wakes watchers), in its one round trip
(`Store.commit(live=...)`): a run of quick steps publishes nothing on its own, and its end
waits for no publish. What a slow step queues (model tokens, tool progress) is sent by a
background task, in one `Store.publish` (one round trip, however many items), once the oldest
queued item has waited `BATCH_WINDOW` seconds (a timer starts the task then: quick steps,
whose commits take the queue first, start none), so watchers see it while the step runs;
`drain` sends at once, and a commit waits for a publish in flight (`sent`). A publish that
fails is dropped (logged at debug level): the live channel is best effort, the durable history
is what counts. Text deltas queued together are merged into one item.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, NamedTuple

from pydantic import JsonValue

if TYPE_CHECKING:
    from storage import Event, Store

__all__ = ["NO_LIVE", "Publisher", "Started", "StepLive", "notices"]

_log = logging.getLogger("statemachine.live")
_DRAIN_WAIT = 2.0
"""Seconds `drain` waits for the last publish, at most."""
BATCH_WINDOW = 0.02
"""Seconds an item waits for a commit to take it before the sender publishes it (with
whatever queued after it; `drain` cuts the wait short)."""


class Started(NamedTuple):
    """A try of a step begins: try `attempt` of `trigger` after commit `base`."""

    base: int
    trigger: str
    attempt: int
    kind: str
    step: str

    @property
    def item(self) -> dict[str, JsonValue]:
        return _started(*self)


class Publisher:
    """The live channel of one run, as this process writes it."""

    def __init__(self, store: Store, run_id: str) -> None:
        self._store = store
        self._run_id = run_id
        self._queue: list[tuple[int, dict[str, JsonValue]]] = []
        self._since = 0.0
        """The loop time at which the oldest queued item was queued."""
        self._sender: asyncio.Task[None] | None = None
        """The task publishing what is queued, while it runs."""
        self._timer: asyncio.TimerHandle | None = None
        """Starts the sender when the oldest queued item is due: while anything is queued,
        this or the sender is pending (one timer per window, not a task per item: the
        commits of quick steps take the queue before it is due)."""
        self._urgent = False
        """Send what is queued without waiting for the window (`drain`)."""
        self._stored: Started | None = None
        """A "started" item the store wrote with the run (`Store.start(live=...)`)."""
        self.sending: asyncio.Future[None] | None = None
        """The sender's publish while it is in flight: a commit waits for it (`sent`), so
        that the items the commit takes land after the ones being published."""

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
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a step called from sync code): nothing to send on
            return
        if not queue:
            self._since = loop.time()
        queue.append((base, item))
        if self._timer is None and (self._sender is None or self._sender.done()):
            self._timer = loop.call_at(self._since + BATCH_WINDOW, self._due, loop)

    def take(self) -> list[tuple[int, dict[str, JsonValue]]]:
        """What is queued, for a commit to write (`Store.commit(live=...)`): the sender will
        not send it."""
        queued, self._queue = self._queue, []
        return queued

    def started(self, base: int, trigger: str, attempt: int, kind: str, step: str) -> None:
        self.emit(base, _started(base, trigger, attempt, kind, step))

    async def started_now(
        self, base: int, trigger: str, attempt: int, kind: str, step: str
    ) -> None:
        """`started`, stored before this returns (what was queued before goes first); the
        store's error is raised: the runner counts deaths by it (`_crashes.deaths_in_step`).
        Nothing to do when the store wrote this very item with the run (`stored`)."""
        if self._stored is not None and self._stored == (base, trigger, attempt, kind, step):
            self._stored = None
            return
        await self.drain()
        item = _started(base, trigger, attempt, kind, step)
        await self._store.publish(self._run_id, [*self.take(), (base, item)])

    def stored(self, started: Started) -> None:
        """The store wrote `started` when it created the run (`Machine.run`)."""
        self._stored = started

    def failed(self, base: int, attempt: int, error: BaseException, again: bool) -> None:
        self.emit(base, {"kind": "failed", "seq": base + 1, "attempt": attempt,
                         "error": {"type": type(error).__name__, "message": str(error)},
                         "retrying": again})  # fmt: skip

    def step(self, base: int, attempt: int) -> StepLive:
        return StepLive(self, base, attempt)

    async def sent(self) -> None:
        """Wait until the publish in flight, if any, is done (or `_DRAIN_WAIT` passed)."""
        sending = self.sending
        if sending is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(sending), _DRAIN_WAIT)

    async def drain(self) -> None:
        """Send what was queued now, and wait (a little, at most) until it is sent."""
        running = self._sender is not None and not self._sender.done()
        if not (self._queue or running):
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._urgent = True
        try:
            await asyncio.wait_for(asyncio.shield(self._start_sender()), _DRAIN_WAIT)
        except TimeoutError:
            return

    def _due(self, loop: asyncio.AbstractEventLoop) -> None:
        """The timer: send what is queued if its oldest item is due; else wait for that."""
        self._timer = None
        if not self._queue:
            return  # commits took it
        due = self._since + BATCH_WINDOW
        if loop.time() < due:  # taken, and queued again since
            self._timer = loop.call_at(due, self._due, loop)
        else:
            self._start_sender()

    def _start_sender(self) -> asyncio.Task[None]:
        """The sender, started unless it runs."""
        if self._sender is None or self._sender.done():
            self._sender = asyncio.get_running_loop().create_task(self._send())
        return self._sender

    async def _send(self) -> None:
        loop = asyncio.get_running_loop()
        while self._queue and (self._urgent or loop.time() >= self._since + BATCH_WINDOW):
            self._urgent = False
            batch = self.take()
            sending = self.sending = loop.create_future()
            try:
                await self._store.publish(self._run_id, batch)
            except Exception as exc:
                _log.debug("run %s: %d live items dropped: %s", self._run_id, len(batch), exc)
            finally:
                self.sending = None
                sending.set_result(None)
        self._urgent = False  # a commit may have taken what a drain asked to send
        if self._queue and self._timer is None:  # queued while publishing, not due yet
            self._timer = loop.call_at(self._since + BATCH_WINDOW, self._due, loop)


def notices(event: Event, *, alone: bool) -> list[tuple[int, dict[str, JsonValue]]]:
    """What committing `event` says on the live channel (written by the commit itself):
    when the run stops being driven, the item saying it parked or ended; else, when the
    commit carries no other item (`alone`), a notice that wakes watchers waiting on the
    channel (they read the event itself from the history; any item wakes them)."""
    said: dict[str, JsonValue] = {"kind": "committed", "seq": event.seq, "attempt": event.attempt,
                                  "status": event.status}  # fmt: skip
    if event.status != "running":
        return [(event.seq, {**said, "kind": "stopped"})]
    return [(event.seq, said)] if alone else []


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
        """Wait until what this step emitted is published (a step that must have watchers
        see it before it goes on; what is still queued when a step returns is written by its
        commit anyway, after anything being published)."""
        if self._publisher is not None:
            await self._publisher.drain()


NO_LIVE = StepLive(None, 0, 0)
