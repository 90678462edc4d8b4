"""What a `Run` reads without moving: why it failed, its history, its memory at a past
commit, which transition wrote a field, and watching it (the base of `Run`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TypeVar

from pydantic import BaseModel, JsonValue

from storage import Event

from ._provenance import Provenance, memory_at, why
from ._run_core import RunCore
from ._watch import WatchItem, watch
from .errors import RunError

__all__ = ["RunReads"]

M = TypeVar("M", bound=BaseModel)


class RunReads(RunCore[M]):
    """The reading side of a `Run`."""

    @property
    def error(self) -> dict[str, JsonValue] | None:
        """Why a failed run failed: the last error event's "type", "message", "attempt",
        "step" kind, "trigger" and "seq" (known once `until_done()` returned); None when the
        run is not failed."""
        events = self._ledger.events
        if self.status != "failed" or not events:
            return None
        failed = next((e for e in reversed(events) if e.error), None)
        if failed is None:
            return None
        return {**(failed.error or {}), "trigger": failed.trigger, "seq": failed.seq}

    async def history(self, from_seq: int = 0) -> list[Event]:
        """The committed events of this run, in order."""
        return await self.store.history(self.run_id, from_seq)

    async def at(self, seq: int) -> tuple[str, M]:
        """The state and memory as they were right after commit `seq` (read from the
        history; `ValueError` for a seq the run has not reached)."""
        if not 0 <= seq <= self.seq:
            raise ValueError(f"seq {seq} is out of range: the events cover seqs 0..{self.seq}")
        # Read back from `seq` a page at a time, to the latest snapshot (or the start): the
        # runner writes one whenever the patches since the last reach the memory's size, so
        # this reads about that much, not the whole history.
        events: list[Event] = []
        page, high = 64, seq
        while high >= 0:
            low = max(high - page + 1, 0)
            got = await self.store.history(self.run_id, low, high)
            events[:0] = got
            if low == 0 or any(e.snapshot is not None for e in got):
                break
            high, page = low - 1, page * 2
        state, fields = memory_at(events, seq)
        later = None
        if self._record.version > 1:  # migrated at some point: was it after `seq`?
            later = next(
                (e for e in await self.store.history(self.run_id, seq + 1) if e.version),
                None,
            )
        if later is not None:
            raise RunError(
                f"run {self.run_id!r}: at seq {seq} its memory had the schema of an older"
                f" version (migrated at seq {later.seq}); `agentfsm show --at` and"
                " `statemachine._provenance.memory_at` give its fields as stored"
            )
        memory = self.machine.validate_memory(fields, f"run {self.run_id!r} at seq {seq}")
        return state, memory

    async def why(self, field: str, *, at: int | None = None) -> Provenance:
        """Which transition last wrote memory field `field` (as of commit `at`), with the
        step that ran, the model's messages, and the writes before it."""
        return why(await self.store.history(self.run_id), field, at=at, machine=self.machine)

    def watch(self, *, after: str | None = None, follow: bool = False) -> AsyncIterator[WatchItem]:
        """Iterate over what happens in this run, from any process: its committed events
        and live items (step tries, model tokens) after offset `after`, then live, until
        the run stops being driven; with `follow`, on across resumes until it ends. See
        `statemachine._watch` for the offsets and what is guaranteed."""
        return watch(self.store, self.run_id, after=after, follow=follow)
