"""Making new runs: the record of a run that starts fresh (`new_record`, for `Machine.start`)
and the record and creation event of a fork from a past commit of another (`fork_plan`)."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, JsonValue

from storage import Event, RunRecord, Store
from storage.base import check_run_id, run_key

from . import _clock
from ._provenance import memory_at
from ._spec import MachineSpec
from ._tracing import RunTrace, open_trace
from .errors import RunError, RunNotFound

__all__ = ["fork_plan", "new_record"]

M = TypeVar("M", bound=BaseModel)


def new_record(
    machine: MachineSpec[Any], run_id: str | None, state: str, memory: dict[str, JsonValue],
    *, forked_from: RunRecord | None = None,
) -> tuple[RunRecord, RunTrace]:  # fmt: skip
    """A new run of `machine` at seq 0 in `state` with (checked) `memory`, and its trace."""
    created = _clock.now()
    run_id = run_id or uuid.uuid4().hex
    traced = open_trace(machine.name, machine.version, run_id, state, forked_from=forked_from)
    record = RunRecord(
        run_id=run_id,
        agent=machine.name,
        version=machine.version,
        state=state,
        seq=0,
        status=machine.status_in(state),
        memory=memory,
        created_at=created,
        updated_at=created,
        deadline=machine.deadline_in(state, created),
        nonce=secrets.token_hex(8),
        trace=traced.traceparent,
    )
    return record, traced


async def fork_plan(
    machine: MachineSpec[M], store: Store, run_id: str, at_seq: int, *,
    new_run_id: str | None = None, memory_update: Mapping[str, Any] | None = None,
) -> tuple[RunRecord, Event, RunTrace]:  # fmt: skip
    """`Machine.fork_plan`: the new run's record, its creation event and its trace; or the
    error `fork` would raise. Writes nothing."""
    source = await store.load(run_id)
    if source is None:
        raise RunNotFound(run_id)
    if source.agent != machine.name:
        raise RunError(f"run {run_id!r} belongs to {source.agent!r}, not to {machine.name!r}")
    history = await store.history(run_id)
    state, fields = memory_at(history, at_seq)
    if state not in machine.table.states:
        raise RunError(
            f"run {run_id!r} was in state {state!r} at seq {at_seq}, which {machine.name!r}"
            f" v{machine.version} does not have"
        )
    known = machine.memory_type.model_fields
    unknown = set(memory_update or {}) - set(known)
    if unknown:
        raise ValueError(
            f"forking run {run_id!r}: memory_update names unknown fields {sorted(unknown)};"
            f" the fields are {sorted(known)}"
        )
    if new_run_id is not None and await store.load(check_run_id(new_run_id)) is not None:
        raise RunError(f"a run with id {new_run_id!r} exists: pick another new_run_id")
    memory = machine.storable_memory({**fields, **(memory_update or {})}, f"forking {run_id!r}")
    record, traced = new_record(machine, new_run_id, state, memory, forked_from=source)
    origin: dict[str, JsonValue] = {"forked_from": run_id, "at": at_seq}
    if memory_update:
        origin["memory_update"] = list(sorted(memory_update))
    start = Event(
        seq=0, trigger="start", kind="start", source="", dest=state, status=record.status,
        key=run_key(record, "start"), patch=memory, output=origin,
        started_at=record.created_at, ended_at=record.created_at, deadline=record.deadline,
        # The conversation so far comes along, so LLM steps of the fork go on from it.
        messages=[m for e in history[: at_seq + 1] for m in e.messages],
    )  # fmt: skip
    return record, start, traced
