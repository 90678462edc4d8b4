"""What a `Run` keeps of its run in memory between commits: the memory's fields as JSON and
their sizes, the bytes since the last snapshot, and the history it read (events, the
conversation, visit counts, the seq the current state was entered at), each read once per
process and kept up to date by the run's own commits."""

from __future__ import annotations

from dataclasses import replace

from pydantic import JsonValue

from storage import Event, Store
from storage.base import json_bytes

from ._keys import enters

__all__ = ["NOT_TABLE_EDGES", "SNAPSHOT_EVERY", "Ledger", "json_size"]

SNAPSHOT_EVERY = 64 * 1024
"""Bytes of patches between two snapshots of the memory, at least."""
NOT_TABLE_EDGES = frozenset({"start", "error", "control", "timeout", "halt"})
"""Event kinds the runner writes itself; every other event is a table transition firing."""


def json_size(value: JsonValue, where: str = "a value") -> int:
    """Bytes `value` takes as compact JSON, as the stores write it; `storage.errors.
    Unstorable` naming `where` for a value that would not read back equal."""
    return len(json_bytes(value, where))


class Ledger:
    """One run's memory as JSON fields and what was read of its history."""

    def __init__(self, store: Store, run_id: str, fields: dict[str, JsonValue], seq: int) -> None:
        self.store = store
        self.run_id = run_id
        self.fields: dict[str, JsonValue] = dict(fields)
        self.sizes: dict[str, int] | None = None
        self.since_snapshot = 0
        """Bytes of patches this process committed since the run's last snapshot."""
        self.events: list[Event] | None = None
        """The run's events, read once per process and extended by its own commits."""
        self.conversation: list[JsonValue] | None = None
        self.visit_counts: dict[str, int] | None = None
        self.entered: int | None = 0 if seq == 0 else None
        """The seq at which the run entered its current state (None: not read yet)."""

    def forget(self, fields: dict[str, JsonValue]) -> None:
        """Start again from `fields`, read from the store: the run moved elsewhere."""
        self.fields = dict(fields)
        self.sizes = None
        self.conversation = None
        self.events = None
        self.visit_counts = None
        self.entered = None

    def field_sizes(self) -> dict[str, int]:
        """Bytes of each memory field as JSON, kept up to date by commits."""
        if self.sizes is None:
            self.sizes = {k: json_size(v) for k, v in self.fields.items()}
        return self.sizes

    def with_snapshot(self, event: Event, patch_bytes: int) -> Event:
        """`event` with a snapshot of the whole memory when the patches committed since the
        last one (in this process) add up to the memory's size: rebuilding the memory at any
        seq then replays at most about that much, and snapshots at most double the bytes
        written (at least SNAPSHOT_EVERY bytes apart, so small memories rarely take one)."""
        self.since_snapshot += patch_bytes
        if self.since_snapshot < max(sum(self.field_sizes().values()), SNAPSHOT_EVERY):
            return event
        memory = {**self.fields, **event.patch}
        for name in event.dropped:
            memory.pop(name, None)
        return replace(event, snapshot=memory)

    def committed(self, event: Event, patch_sizes: dict[str, int] | None) -> None:
        """Take in `event`, just committed."""
        if enters(event):
            self.entered = event.seq
        if event.snapshot is not None:
            self.since_snapshot = 0
        for name in event.dropped:
            self.fields.pop(name, None)
            if self.sizes is not None:
                self.sizes.pop(name, None)
        if event.patch:
            self.fields.update(event.patch)
            if self.sizes is not None and patch_sizes is not None:
                self.sizes.update(patch_sizes)
        if self.conversation is not None:
            self.conversation.extend(event.messages)
        if self.events is not None:
            self.events.append(event)
        if self.visit_counts is not None and event.kind not in NOT_TABLE_EDGES:
            self.visit_counts[event.trigger] = self.visit_counts.get(event.trigger, 0) + 1

    async def load_events(self) -> list[Event]:
        """For steps (`StepContext.history`): the events, without a read per step."""
        if self.events is None:
            self.events = await self.store.history(self.run_id)
        return list(self.events)

    async def load_conversation(self) -> list[JsonValue]:
        if self.conversation is None:
            events = await self.store.history(self.run_id)
            self.conversation = [m for e in events for m in e.messages]
        return list(self.conversation)

    async def visits(self, trigger: str) -> int:
        """How often `trigger` fired in this run so far (read from the history once)."""
        if self.visit_counts is None:
            counts: dict[str, int] = {}
            for e in await self.store.history(self.run_id):
                if e.kind not in NOT_TABLE_EDGES:
                    counts[e.trigger] = counts.get(e.trigger, 0) + 1
            self.visit_counts = counts
        return self.visit_counts.get(trigger, 0)

    async def entered_at(self, seq: int) -> int:
        """The seq of the last commit that entered the current state (the run is at `seq`),
        read back from the latest event a page at a time (usually one event: the last
        commit is the visit) unless known."""
        if self.entered is None:
            self.entered = await self._read_entered(seq)
        return self.entered

    async def _read_entered(self, seq: int) -> int:
        high, page = seq, 1
        while True:
            low = max(high - page + 1, 0)
            for event in reversed(await self.store.history(self.run_id, low, high)):
                if enters(event):
                    return event.seq
            if low == 0:
                return 0
            high, page = low - 1, page * 4
