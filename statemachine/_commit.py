"""Committing one event of a run, and what each outcome of `Store.commit` means.

`Committer._commit` completes the event (deadline, retention, memory snapshot), collects
what the hooks add to the commit, sends the ONE `Store.commit`, and then: `Committed` moves
this copy of the run on (`advance`) and runs the after-commit hooks; every other outcome is
handled in `_refused`: a `Duplicate` of this process's own commit (an answer lost on the
way) goes on from the stored run; anything else means another process drives the run now
(`RunTakenOver`), or the store lost commits (`CommitsLost`).

A commit cut short before its answer came may stand or not; sent again under its
idempotency key it stands exactly once either way. When the caller's task is cancelled,
it is sent again at once and the cancellation goes on after it (`_commit_event`); after
an error that reaches the caller (a lost connection, `OutcomeUnknown`) it is kept in doubt
and sent again by the run's next call (`Run.step` then returns it: that call is its retry).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import replace
from typing import Any, TypeVar

from pydantic import BaseModel

from storage import CommitOutcome, Committed, Conflict, Duplicate, Event, Lease, RunRecord
from storage.errors import OutcomeUnknown, StoreUnavailable
from storage.usage import added

from . import _clock
from ._ledger import json_size
from ._run_core import RunCore
from ._tracing import transition_span
from .errors import RunNotFound, RunTakenOver

__all__ = ["Committer", "advance"]

_UNKNOWN = (OutcomeUnknown, StoreUnavailable, OSError)
"""What leaves a commit's outcome unknown besides a cancellation (`Committer._in_doubt`);
anything else a store raises (`Unstorable`, `DurabilityUnavailable`, ...) refused it
before writing."""

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")


class Committer(RunCore[M]):
    """A run that commits its events (the base of `Run`)."""

    _in_doubt: tuple[Lease, Event, dict[str, Any]] | None = None
    """A commit an error cut short: its lease, event and hooks' additions (see `_hold`)."""

    async def _hold(self) -> Lease:
        if self._in_doubt is not None:
            await self._settle_in_doubt()
        return await super()._hold()

    async def _send(self, lease: Lease, event: Event, extra: dict[str, Any]) -> CommitOutcome:
        """The ONE `Store.commit` of `event`, as `expected_seq` and the lease say."""
        try:
            return await self.store.commit(
                self.run_id, expected_seq=event.seq - 1, token=lease.token, event=event, **extra
            )
        except KeyError:
            await self.release(quiet=True)
            raise RunNotFound(self.run_id, lost=True) from None

    async def _settle_in_doubt(self) -> Event | None:
        """Send again the commit an error cut short (`_in_doubt`), then go on from the store;
        its event if it stands. Under its key it stands once, whether or not the first try
        got through; a refusal for another reason (the run moved, the lease was lost) is
        the next commit's to find."""
        assert self._in_doubt is not None
        lease, event, extra = self._in_doubt
        outcome = await self._send(lease, event, extra)
        self._in_doubt = None
        await self._reload()
        if self.status != "running":
            self._keeper.dropped()  # the commit that stopped the run gave the lease back
        landed = isinstance(outcome, Committed) or (
            isinstance(outcome, Duplicate) and outcome.seq == event.seq
        )
        if not (landed and self.seq == event.seq):
            return None
        for hook in self.hooks.after_commit:
            await hook.after_commit(self._record, event, again=True)
        return event

    async def _commit(
        self, lease: Lease, event: Event, memory: M, patch_sizes: dict[str, int] | None = None
    ) -> Event:
        """`_commit_event`, in the transition's span (`_fire`'s, or one of its own)."""
        with transition_span(self._record, event.trigger, event.kind) as span:
            return span.committed(await self._commit_event(lease, event, memory, patch_sizes))

    async def _commit_event(
        self, lease: Lease, event: Event, memory: M, patch_sizes: dict[str, int] | None = None
    ) -> Event:
        deadline = self.machine.deadline_in(event.dest, event.ended_at or _clock.now())
        if deadline != event.deadline:
            event = replace(event, deadline=deadline)
        retention = self.machine.retention
        if retention is not None and event.status in ("done", "cancelled"):
            event = replace(event, expires_at=(event.ended_at or _clock.now()) + retention)
        if event.patch and patch_sizes is None:
            patch_sizes = {k: json_size(v) for k, v in event.patch.items()}
        if patch_sizes:
            event = self._ledger.with_snapshot(event, sum(patch_sizes.values()))
        if self.live.sending is not None:  # the items this commit takes go after those
            await self.live.sent()
        extra: dict[str, Any] = {}
        for hook in self.hooks.before_commit:
            extra.update(hook.before_commit(memory, event))
        cut: asyncio.CancelledError | None = None
        try:
            outcome = await self._send(lease, event, extra)
        except asyncio.CancelledError as cancelled:
            # The caller's task was cancelled before the answer came: the commit may stand
            # or not. Sent again under its key it stands once, and the cancellation goes on
            # when this copy of the run knows which (else its next commit is refused).
            cut = cancelled
            try:
                outcome = await _despite_cancellation(self._send(lease, event, extra))
            except _UNKNOWN as error:
                self._in_doubt = (lease, event, extra)
                raise cut from error
        except _UNKNOWN:
            self._in_doubt = (lease, event, extra)
            raise
        if not isinstance(outcome, Committed):
            try:
                event = await self._refused(event, outcome)
            except Exception as refusal:
                if cut is None:
                    raise
                raise cut from refusal  # the cancellation goes on, whatever the commit met
        else:
            self._record = advance(self._record, event)
            self._ledger.committed(event, patch_sizes)
            self.memory = memory
            if event.status != "running":
                self._keeper.dropped()  # the commit gave the lease back
            for hook in self.hooks.after_commit:  # last: this copy is up to date if one fails
                await hook.after_commit(self._record, event, again=False)
        if cut is not None:
            raise cut
        return event

    async def _refused(self, event: Event, outcome: CommitOutcome) -> Event:
        """The commit of `event` was not applied (`outcome`): go on from our own earlier
        commit of it (a lost answer), or raise what the refusal means."""
        if isinstance(outcome, Duplicate):
            # The key was committed before. By this process, on a try whose answer was lost:
            # go on from the stored run. By another process (this one lost the run and a new
            # holder did this step meanwhile): stop, as for any refused commit.
            found = await self.store.history(self.run_id, outcome.seq)
            if found and found[0].seq == outcome.seq and found[0].worker == self.owner:
                await self._reload()
                if found[0].status != "running":
                    self._keeper.dropped()  # that commit gave the lease back
                return found[0]
            why = f"another process committed {event.trigger!r} as seq {outcome.seq}"
        elif isinstance(outcome, Conflict):
            why = f"it moved to seq {outcome.current_seq}"
        else:
            why = "its lease was taken over"
        await self.release(quiet=True)
        stored = await self.store.load(self.run_id)
        if stored is not None and stored.seq < self.seq:
            raise await self._lost(stored, self.seq)
        raise RunTakenOver(
            f"run {self.run_id!r}: commit of {event.trigger!r} at seq {event.seq} refused, {why};"
            " another process drives the run now"
        )


async def _despite_cancellation(work: Awaitable[T]) -> T:
    """`work`'s result, waited for to its end even if this task is cancelled meanwhile."""
    task = asyncio.ensure_future(work)
    while True:
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.cancelled():
                raise


def advance(record: RunRecord, event: Event) -> RunRecord:
    """`record` after `event` committed: what the store now holds, without reading it."""
    memory: dict[str, Any] = {**record.memory, **event.patch} if event.patch else record.memory
    if event.dropped:
        memory = {k: v for k, v in memory.items() if k not in event.dropped}
    return RunRecord(
        run_id=record.run_id,
        agent=record.agent,
        version=record.version if event.version is None else event.version,
        state=event.dest,
        seq=event.seq,
        status=event.status,
        memory=memory,
        created_at=record.created_at,
        updated_at=event.ended_at,
        holder=record.holder,
        crashes=0,
        deadline=event.deadline,
        nonce=record.nonce,
        expires_at=record.expires_at if event.expires_at is None else event.expires_at,
        trace=record.trace,
        usage=added(record.usage, event.usage) if event.usage else record.usage,
    )
