"""Schema versions: bring a stored run of an older version of a machine up to this one.

`Machine(version=3, migrations={1: v1_to_v2, 2: v2_to_v3}, state_renames={"old": "new"})`.
A migration takes the memory as JSON (a dict) and returns the memory of the next version.
When a run of an older version is resumed, the migrations run in order, the result is checked
against the current schema, and the change is committed as one "migrate" event (the fields
that changed, the fields dropped, the new version), so the history says when and how the run
changed shape. A run whose state the table no longer has is moved along `state_renames` the
same way; without a rename it is refused, naming the state and the way out.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from pydantic import JsonValue

from storage import Committed, Duplicate, Event, RunRecord, RunStatus, Store
from storage.process import owner_id

from ._keys import control_key
from ._lease import take_lease
from .errors import DefinitionError, RunError, VersionMismatch

if TYPE_CHECKING:
    from ._spec import MachineSpec

__all__ = ["Migration", "check_migrations", "needs_upgrade", "upgrade"]

Migration = Callable[[dict[str, JsonValue]], dict[str, JsonValue]]
"""The memory of version N (JSON fields) -> the memory of version N + 1."""


def check_migrations(
    name: str,
    version: int,
    migrations: Mapping[int, Migration],
    state_renames: Mapping[str, str],
    states: tuple[str, ...],
) -> None:
    for v, fn in migrations.items():
        if not isinstance(v, int) or not 1 <= v < version:
            raise DefinitionError(
                f"machine {name!r}: migrations are keyed by the version they start from,"
                f" 1..{version - 1}; {v!r} is not one"
            )
        if not callable(fn):
            raise DefinitionError(f"machine {name!r}: the migration from v{v} is not callable")
    for old, new in state_renames.items():
        if new not in states:
            raise DefinitionError(
                f"machine {name!r}: state_renames sends {old!r} to {new!r}, which is not a state"
            )
        if old in states:
            raise DefinitionError(
                f"machine {name!r}: state_renames renames {old!r}, which is still a state"
            )


def needs_upgrade(machine: MachineSpec[Any], record: RunRecord) -> bool:
    return record.version < machine.version or record.state not in machine.table.states


def _migrated_memory(machine: MachineSpec[Any], record: RunRecord) -> dict[str, JsonValue]:
    memory = dict(record.memory)
    for v in range(record.version, machine.version):
        fn = machine.migrations.get(v)
        if fn is None:
            raise VersionMismatch(
                f"run {record.run_id!r} was stored by {machine.name!r} version {record.version};"
                f" this is version {machine.version} and has no migration from v{v}"
                f" (Agent(migrations={{{v}: ...}}))"
            )
        try:
            out = fn(dict(memory))
        except Exception as exc:
            raise RunError(
                f"run {record.run_id!r}: the migration from v{v} raised {type(exc).__name__}: {exc}"
            ) from exc
        if not isinstance(out, dict):
            raise RunError(
                f"run {record.run_id!r}: the migration from v{v} returned"
                f" {type(out).__name__}, not a dict of memory fields"
            )
        memory = out
    checked = machine.validate_memory(
        memory, f"run {record.run_id!r} migrated to v{machine.version}"
    )
    fields: dict[str, JsonValue] = checked.model_dump(mode="json")
    return fields


async def upgrade(
    machine: MachineSpec[Any], store: Store, record: RunRecord, lease_wait: float | None
) -> RunRecord:
    """Commit the "migrate" event that brings `record` to `machine`'s version and states;
    the upgraded record. Raises `VersionMismatch` / `RunError` (nothing written) when it
    cannot be done."""
    if record.version > machine.version:
        raise VersionMismatch(
            f"run {record.run_id!r} was stored by {record.agent!r} version {record.version};"
            f" this is version {machine.version}, older: upgrade the code, not the run"
        )
    state = machine.state_renames.get(record.state, record.state)
    if state not in machine.table.states:
        raise RunError(
            f"run {record.run_id!r} is in state {record.state!r}, which {machine.name!r}"
            f" v{machine.version} does not have: rename it with"
            f" state_renames={{{record.state!r}: 'a state it has'}}"
        )
    fields = _migrated_memory(machine, record)
    patch = {k: v for k, v in fields.items() if record.memory.get(k, _MISSING) != v}
    dropped = sorted(set(record.memory) - set(fields))
    status: RunStatus = (
        record.status if record.status in ("failed", "cancelled") else machine.status_in(state)
    )
    owner = owner_id("migrate")
    wait = machine.lease_ttl if lease_wait is None else lease_wait
    lease = await take_lease(store, record.run_id, owner, machine.lease_ttl, wait)
    try:
        at = time.time()
        event = Event(
            seq=record.seq + 1,
            trigger="migrate",
            kind="control",
            source=record.state,
            dest=state,
            status=status,
            key=control_key(record, f"migrate:v{machine.version}"),
            patch=patch,
            dropped=dropped,
            version=machine.version,
            output={
                "from_version": record.version,
                "to_version": machine.version,
                **({"renamed": {record.state: state}} if state != record.state else {}),
            },
            started_at=at,
            ended_at=at,
            worker=owner,
            deadline=machine.deadline_in(state, at) if status == "waiting" else None,
        )
        outcome = await store.commit(
            record.run_id, expected_seq=record.seq, token=lease.token, event=event
        )
    finally:
        await store.release_lease(lease)
    if not isinstance(outcome, Committed | Duplicate):
        raise RunError(f"run {record.run_id!r} moved while it was being migrated: try again")
    upgraded = await store.load(record.run_id)
    assert upgraded is not None
    return upgraded


_MISSING = object()
