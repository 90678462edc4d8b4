"""Committing one event of a run, and what each outcome of `Store.commit` means.

`Committer._commit` completes the event (deadline, retention, memory snapshot), collects
what the hooks add to the commit, sends the ONE `Store.commit`, and then: `Committed` moves
this copy of the run on (`advance`) and runs the after-commit hooks; every other outcome is
handled in `_refused`: a `Duplicate` of this process's own commit (an answer lost on the
way) goes on from the stored run; anything else means another process drives the run now
(`RunTakenOver`), or the store lost commits (`CommitsLost`).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, TypeVar

from pydantic import BaseModel

from storage import CommitOutcome, Committed, Conflict, Duplicate, Event, Lease, RunRecord
from storage.usage import added

from . import _clock
from ._ledger import json_size
from ._run_core import RunCore
from ._tracing import transition_span
from .errors import RunNotFound, RunTakenOver

__all__ = ["Committer", "advance"]

M = TypeVar("M", bound=BaseModel)


class Committer(RunCore[M]):
    """A run that commits its events (the base of `Run`)."""

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
        try:
            outcome = await self.store.commit(
                self.run_id, expected_seq=event.seq - 1, token=lease.token, event=event, **extra
            )
        except KeyError:
            await self.release(quiet=True)
            raise RunNotFound(self.run_id, lost=True) from None
        if not isinstance(outcome, Committed):
            return await self._refused(event, outcome)
        self._record = advance(self._record, event)
        self._ledger.committed(event, patch_sizes)
        self.memory = memory
        if event.status != "running":
            self._keeper.dropped()  # the commit gave the lease back
        for hook in self.hooks.after_commit:  # last: this copy is up to date if one fails
            await hook.after_commit(self._record, event, again=False)
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
