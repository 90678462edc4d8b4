"""Agent memory as a database: the memory at any commit, and where a field's value came from.

Pure functions over a run's events, as `store.history(run_id)` returns them. Event 0 is the
run's creation, whose `patch` is the whole initial memory; every later event's `patch` holds
the memory fields its transition changed (top-level fields, whole values). So the memory right
after commit `n` is the patches of events 0..n applied in order, and the last event at or
before `n` whose patch names a field is the transition that wrote that field's value.

    events = await store.history(run_id)
    state, memory = memory_at(events, 3)          # as it was right after commit 3
    print(why(events, "report").describe())       # which step wrote it, and what before

`memory_at` can start from a `Snapshot` (a state and memory known at some seq), so only the
events after it need to be read: `memory_at(await store.history(run_id, snap.seq + 1), n,
base=snap)`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import JsonValue

from storage import Event, RunRecord

if TYPE_CHECKING:
    from ._spec import MachineSpec

__all__ = ["Provenance", "Snapshot", "Write", "memory_at", "why"]


@dataclass(frozen=True, kw_only=True, slots=True)
class Snapshot:
    """The state and memory of a run right after commit `seq`: a place to replay from."""

    seq: int
    state: str
    memory: dict[str, JsonValue]

    @classmethod
    def of(cls, record: RunRecord) -> Snapshot:
        """The snapshot a loaded run record stands for (its last commit)."""
        return cls(seq=record.seq, state=record.state, memory=dict(record.memory))


def memory_at(
    events: Sequence[Event], seq: int, base: Snapshot | None = None
) -> tuple[str, dict[str, JsonValue]]:
    """The state and memory (JSON fields) of the run right after commit `seq`.

    Without `base`, `events` must start at seq 0 (the creation event) or at an event that
    carries a snapshot of the memory (`Event.snapshot`). With `base`, the replay starts from
    the snapshot, and `events` must hold every event after `base.seq` up to `seq` (earlier
    ones are skipped). The replay starts from the latest snapshot at or before `seq`.
    Raises `ValueError` naming `seq` when it is not a commit these events (and the base)
    cover, or when the events have a gap.
    The memory returned is a new dict; its values are shared with the events, not copied.
    """
    if isinstance(seq, bool) or not isinstance(seq, int):
        raise TypeError(f"seq must be an int, not {type(seq).__name__}")
    stored = next((e for e in reversed(events) if e.seq <= seq and e.snapshot is not None), None)
    if stored is not None and (base is None or stored.seq > base.seq):
        assert stored.snapshot is not None
        base = Snapshot(seq=stored.seq, state=stored.dest, memory=stored.snapshot)
    first = base.seq + 1 if base is not None else 0
    last = _check_contiguous(events, first)
    low = base.seq if base is not None else 0
    if not low <= seq <= last:
        what = f"snapshot at seq {base.seq} and " if base is not None else ""
        span = f"seqs {low}..{last}" if last >= low else "no commits"
        raise ValueError(f"seq {seq} is out of range: the {what}events cover {span}")
    if base is not None:
        state, memory = base.state, dict(base.memory)
    else:
        state, memory = "", {}
    for event in events:
        if event.seq < first:
            continue
        if event.seq > seq:
            break
        memory.update(event.patch)
        for name in event.dropped:  # a schema migration removed it
            memory.pop(name, None)
        state = event.dest
    return state, memory


def _check_contiguous(events: Sequence[Event], first: int) -> int:
    """The last seq of `events`, after checking they run without gaps from `first` on
    (earlier events are allowed and ignored); `first - 1` when there are none that late."""
    expected = None
    for event in events:
        if expected is not None and event.seq != expected:
            raise ValueError(
                f"the events have a gap or are out of order: seq {event.seq} follows"
                f" seq {expected - 1}"
            )
        expected = event.seq + 1
    if expected is None:
        return first - 1
    start = events[0].seq
    if start > first:
        raise ValueError(
            f"the events start at seq {start}, so the commits {first}..{start - 1} before it are"
            " missing" + (": pass base=Snapshot(...) to replay from" if first == 0 else "")
        )
    return max(expected - 1, first - 1)


@dataclass(frozen=True, kw_only=True, slots=True)
class Write:
    """One commit that wrote a memory field: the transition, and what it wrote."""

    seq: int
    trigger: str
    kind: str
    """The step kind (`Event.kind`): "tool", "llm", "wait", "start", ..."""
    source: str
    dest: str
    value: JsonValue
    """The value the commit wrote into the field (JSON)."""
    step: str | None
    """What ran: the tool function's name or the llm step's model, as the event recorded it
    (or, for events stored before they did, as the `machine` given to `why` declares it)."""
    model: str | None
    """The model that answered (from the last response among `messages`), for llm steps."""
    messages: tuple[JsonValue, ...]
    """The model messages this commit appended to the conversation (pydantic-ai JSON)."""
    usage: dict[str, int] | None
    output: JsonValue
    attempt: int
    key: str
    worker: str
    started_at: float
    ended_at: float

    @property
    def edge(self) -> str:
        """`"new -> planned"`, or `"-> new"` for the creation."""
        return f"{self.source} -> {self.dest}" if self.source else f"-> {self.dest}"

    @property
    def initial(self) -> bool:
        """The creation of the run (seq 0) wrote this: it is part of the initial memory."""
        return self.seq == 0


@dataclass(frozen=True, kw_only=True, slots=True)
class Provenance:
    """Where the value of one memory field came from.

    `last` is the commit that wrote the value the field has (at the seq asked about);
    `earlier` the commits that wrote it before, newest first.
    """

    field: str
    value: JsonValue
    last: Write
    earlier: tuple[Write, ...]
    at: int
    """The seq the question was asked at (the last event's, by default)."""

    @property
    def from_initial(self) -> bool:
        """The value is the one the run was created with: no step has changed it since."""
        return self.last.initial

    @property
    def writes(self) -> tuple[Write, ...]:
        """Every write of the field, newest first (`last`, then `earlier`)."""
        return (self.last, *self.earlier)

    def describe(self, *, width: int = 60) -> str:
        """Lines for a terminal: the value, the write that set it, and the writes before.

        Values longer than `width` characters are cut short with an ellipsis.
        """
        lines = [f"{self.field} = {_short(self.value, width)}  (at seq {self.at})"]
        for i, w in enumerate(self.writes):
            label = "written by" if i == 0 else "before that"
            lines.append(f"  {label} {_describe_write(w)}")
            if i:
                lines.append(f"    value {_short(w.value, width)}")
        if self.from_initial:
            lines.append("  the run was created with this value; no step has changed it")
        return "\n".join(lines)


def why(
    events: Sequence[Event],
    field: str,
    *,
    at: int | None = None,
    machine: MachineSpec[Any] | None = None,
) -> Provenance:
    """Which commit last wrote memory field `field` (as of commit `at`, default the last one),
    and which wrote it before. `events` must start at seq 0 and have no gaps.

    `machine` (the agent), when given, names the step that ran each write (the tool
    function, or the llm step's model) from its table. Raises `ValueError` for a field no
    commit up to `at` wrote (naming the fields there are) and for an `at` out of range.
    """
    last_seq = _check_contiguous(events, 0)
    at = last_seq if at is None else at
    if not 0 <= at <= last_seq:
        raise ValueError(f"seq {at} is out of range: the events cover seqs 0..{last_seq}")
    writes: list[Write] = []
    known: dict[str, None] = {}
    for event in events:
        if event.seq > at:
            break
        known.update(dict.fromkeys(event.patch))
        if field in event.patch:
            writes.append(_write(event, event.patch[field], machine))
    if not writes:
        names = ", ".join(sorted(known)) or "none"
        raise ValueError(f"unknown memory field {field!r}: the run's fields are {names}")
    writes.reverse()
    return Provenance(
        field=field, value=writes[0].value, last=writes[0], earlier=tuple(writes[1:]), at=at
    )


def _write(event: Event, value: JsonValue, machine: MachineSpec[Any] | None) -> Write:
    return Write(
        seq=event.seq,
        trigger=event.trigger,
        kind=event.kind,
        source=event.source,
        dest=event.dest,
        value=value,
        step=_step_label(event, machine),
        model=_model_name(event.messages),
        messages=tuple(event.messages),
        usage=event.usage,
        output=event.output,
        attempt=event.attempt,
        key=event.key,
        worker=event.worker,
        started_at=event.started_at,
        ended_at=event.ended_at,
    )


def _step_label(event: Event, machine: MachineSpec[Any] | None) -> str | None:
    if event.step:
        return event.step
    if machine is None or event.seq == 0:
        return None
    for t in machine.table.out.get(event.source, ()):
        if t.trigger == event.trigger and t.step is not None:
            return t.step.label
    return None


def _model_name(messages: Sequence[JsonValue]) -> str | None:
    """The `model_name` of the last model response among pydantic-ai JSON messages."""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("kind") == "response":
            name = message.get("model_name")
            if isinstance(name, str) and name:
                return name
    return None


def _describe_write(w: Write) -> str:
    what = w.kind
    if w.step:
        what += f" {w.step}"
    if w.model and w.model != w.step:
        what += f" (answered by {w.model})"
    where = "creation of the run" if w.initial else f"{w.trigger!r}"
    return f"seq {w.seq}: {where} [{what}] {w.edge}"


def _short(value: JsonValue, width: int) -> str:
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return text if len(text) <= width else text[: max(width - 1, 1)] + "…"
