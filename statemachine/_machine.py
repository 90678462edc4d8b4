"""`Machine`: a declared, checked state table with a typed memory, and the way to run it."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from pydantic import BaseModel, JsonValue, ValidationError

from storage import Event, RunRecord, RunStatus, Store

from ._draw import Graph, draw
from ._migrate import Migration, check_migrations, needs_upgrade, upgrade
from ._provenance import memory_at
from ._runner import Run, json_size, now
from ._table import Transition
from ._validate import Table, compile_table
from .errors import (
    InvalidMemory,
    MemoryTooLarge,
    NotDue,
    NoTransition,
    RunError,
    RunLocked,
    RunNotFound,
    RunTakenOver,
    VersionMismatch,
)

if TYPE_CHECKING:
    from storage.queue import RunQueue

__all__ = ["DEFAULT_MAX_MEMORY", "Machine"]

M = TypeVar("M", bound=BaseModel)

DEFAULT_MAX_MEMORY = 16 * 2**20
"""Bytes of JSON a run's memory may take by default: 16 MiB."""


class Machine(Generic[M]):
    """A state machine whose every transition commits durably to a `storage.Store`.

    Args:
        name: identifies the machine's runs in the store.
        version: bump it when the table or the memory schema changes incompatibly.
        memory: the pydantic model of the run's memory.
        initial: the state a new run starts in.
        final: the states that end a run (status `done`).
        transitions: the table, in order: out of one state, the first transition whose
            guard passes fires.
        states: all state names; optional (derived from the table), but declaring them
            turns a misspelled state into an error at once.
        on_error: the state a run moves to when a step gives up (status `failed`);
            without it a failed run stays in the state it failed in.
        lease_ttl: seconds a process holds a run without renewing (it renews every third
            of that in the background); a crashed holder's runs can be resumed after it.
        max_memory: the most bytes the memory may take as JSON (None: no limit). A run
            created bigger is refused; a step that makes it bigger fails, and nothing of it
            is written.
        migrations: for each older version N, a function from the memory (JSON fields) of
            version N to that of N + 1. A stored run of an older version is migrated when it
            is resumed, recorded as a "migrate" event; a newer one is refused.
        state_renames: old state name -> new, for stored runs in a state the table no
            longer has (else they are refused, naming the state).
        retention: seconds a run is kept after it ends (done or cancelled); then Redis
            expires its keys, and `agentfsm gc` deletes it from the embedded store. None:
            kept for good. Failed runs are kept (they may be retried).
    """

    def __init__(
        self,
        *,
        name: str,
        memory: type[M],
        initial: str,
        final: str | Sequence[str],
        transitions: Sequence[Transition],
        version: int = 1,
        states: Sequence[str] | None = None,
        on_error: str | None = None,
        lease_ttl: float = 15.0,
        max_memory: int | None = DEFAULT_MAX_MEMORY,
        migrations: Mapping[int, Migration] | None = None,
        state_renames: Mapping[str, str] | None = None,
        retention: float | None = None,
    ) -> None:
        if not isinstance(memory, type) or not issubclass(memory, BaseModel):
            raise TypeError(f"memory must be a pydantic model class, not {memory!r}")
        if not isinstance(version, int) or version < 1:
            raise ValueError(f"version must be a positive int, not {version!r}")
        if lease_ttl <= 0:
            raise ValueError(f"lease_ttl must be positive, not {lease_ttl}")
        if max_memory is not None and max_memory < 1:
            raise ValueError(f"max_memory must be positive bytes (or None), not {max_memory}")
        self.max_memory = max_memory
        if retention is not None and not retention > 0:
            raise ValueError(f"retention must be positive seconds (or None), not {retention}")
        self.retention = retention
        self.name = name
        self.version = version
        self.memory_type = memory
        self.lease_ttl = lease_ttl
        self.table: Table = compile_table(
            machine=name,
            initial=initial,
            final=[final] if isinstance(final, str) else list(final),
            transitions=list(transitions),
            states=states,
            on_error=on_error,
        )
        self.migrations: dict[int, Migration] = dict(migrations or {})
        self.state_renames: dict[str, str] = dict(state_renames or {})
        check_migrations(name, version, self.migrations, self.state_renames, self.table.states)

    def __repr__(self) -> str:
        size = f"{len(self.table.states)} states"
        return f"<{type(self).__name__} {self.name!r} v{self.version}: {size}>"

    @property
    def states(self) -> tuple[str, ...]:
        return self.table.states

    @property
    def transitions(self) -> tuple[Transition, ...]:
        return self.table.transitions

    def graph(
        self, run: RunRecord | Run[M] | None = None, events: Sequence[Event] | None = None
    ) -> Graph:
        """The state graph, to write out with `.mermaid()`, `.dot()`, `.svg()` or `.png()`.

        With a run (its `RunRecord` or the `Run`) and its events (`await run.history()`), the
        run is drawn on it: its current state highlighted, the transitions it took in bold
        with how often, failed steps in red. Reads nothing: `await Graph.of_run(run)` fetches
        the history for you.

            analyst.graph().mermaid()
            analyst.graph(run=record, events=history).svg()
        """
        return draw(self, run, events)

    def status_in(self, state: str) -> RunStatus:
        """The status of a run that is in `state`."""
        table = self.table
        if state in table.final:
            return "done"
        if state == table.on_error:
            return "failed"
        return "waiting" if state in table.waiting else "running"

    def deadline_in(self, state: str, since: float) -> float | None:
        """When a run that entered `state` at `since` times out; None if it cannot."""
        timed = self.table.timeouts.get(state)
        if timed is None or timed.timeout is None:
            return None
        return since + timed.timeout

    async def fire_due(self, store: Store, *, limit: int = 100, drive: bool = True) -> list[str]:
        """Fire the timeouts that are due for this machine's runs in `store`.

        Any process may call this, as often as it likes (a worker polls it): a run whose
        event came meanwhile, or that another process is firing, is skipped. With `drive`,
        each run then goes on until it is done, failed or waiting again (`until_done`).
        Returns the ids of the runs it moved to their timeout state.
        """
        fired: list[str] = []
        for run_id in await store.due(now(), limit=limit):
            record = await store.load(run_id)
            if record is None or record.agent != self.name or record.version != self.version:
                continue
            run = self._open(store, record, 0.0)
            try:
                await run.fire_timeout()
            except (RunLocked, RunTakenOver, NotDue):
                await run.release(quiet=True)
                continue
            fired.append(run_id)
            if drive:
                with contextlib.suppress(RunLocked, RunTakenOver):  # another process has it
                    await run.until_done()  # releases the run in the end
            else:
                await run.release(quiet=True)
        return fired

    def next_transition(self, state: str, memory: M) -> Transition:
        """The transition that fires from `state` with this memory: the first in table order
        whose guard passes. Raises `NoTransition` naming the state and the guards tried."""
        rows = self.table.out.get(state, ())
        for t in rows:
            if t.guard is None or t.guard(memory):
                return t
        if not rows:
            raise NoTransition(f"machine {self.name!r}: no transition leaves state {state!r}")
        tried = ", ".join(f"{t.trigger!r} [{t.guard_label}]" for t in rows)
        raise NoTransition(
            f"machine {self.name!r}: no transition out of state {state!r} applies: every guard"
            f" returned False ({tried})"
        )

    def validate_memory(self, memory: M | Mapping[str, Any], where: str) -> M:
        """`memory` checked against the schema, or `InvalidMemory` naming the fields."""
        try:
            if isinstance(memory, self.memory_type):
                return self.memory_type.model_validate(memory.model_dump())
            return self.memory_type.model_validate(memory)
        except ValidationError as exc:
            raise InvalidMemory(where, exc) from None

    async def start(
        self,
        store: Store,
        memory: M | Mapping[str, Any],
        *,
        run_id: str | None = None,
        lease_wait: float = 0.0,
    ) -> Run[M]:
        """Create a run in the initial state; with the `run_id` of a run that exists, return
        that run instead (so a client may retry `start` safely).

        Nothing runs until `Run.step()` or `Run.until_done()`.
        """
        checked = self.validate_memory(memory, f"starting {self.name!r}")
        fields = checked.model_dump(mode="json")
        size = sum(json_size(v) for v in fields.values())
        if self.max_memory is not None and size > self.max_memory:
            raise MemoryTooLarge(
                f"starting {self.name!r}: the memory takes {size} bytes as JSON, over the"
                f" limit of {self.max_memory} (Agent(max_memory=...))"
            )
        created = now()
        record = RunRecord(
            run_id=run_id or uuid.uuid4().hex,
            agent=self.name,
            version=self.version,
            state=self.table.initial,
            seq=0,
            status=self.status_in(self.table.initial),
            memory=fields,
            created_at=created,
            updated_at=created,
            deadline=self.deadline_in(self.table.initial, created),
        )
        stored = await store.create(record)
        if needs_upgrade(self, stored):  # a run of that id, stored by an older version
            stored = await upgrade(self, store, stored, lease_wait)
        return self._open(store, stored, lease_wait)

    async def fork(
        self,
        store: Store,
        run_id: str,
        at_seq: int,
        *,
        new_run_id: str | None = None,
        memory_update: Mapping[str, Any] | None = None,
        lease_wait: float = 0.0,
    ) -> Run[M]:
        """A new run that starts where run `run_id` was right after commit `at_seq`, with
        `memory_update` applied to its memory: to try another path from a past point. The
        original is untouched; the new run's creation event names it (`forked_from`, `at`).
        Nothing runs until `step()` / `until_done()`."""
        source = await store.load(run_id)
        if source is None:
            raise RunNotFound(run_id)
        if source.agent != self.name:
            raise RunError(f"run {run_id!r} belongs to {source.agent!r}, not to {self.name!r}")
        history = await store.history(run_id)
        state, fields = memory_at(history, at_seq)
        if state not in self.table.states:
            raise RunError(
                f"run {run_id!r} was in state {state!r} at seq {at_seq}, which {self.name!r}"
                f" v{self.version} does not have"
            )
        unknown = set(memory_update or {}) - set(self.memory_type.model_fields)
        if unknown:
            raise ValueError(
                f"forking run {run_id!r}: memory_update names unknown fields {sorted(unknown)};"
                f" the fields are {sorted(self.memory_type.model_fields)}"
            )
        if new_run_id is not None and await store.load(new_run_id) is not None:
            raise RunError(f"a run with id {new_run_id!r} exists: pick another new_run_id")
        checked = self.validate_memory({**fields, **(memory_update or {})}, f"forking {run_id!r}")
        memory = checked.model_dump(mode="json")
        created = now()
        record = RunRecord(
            run_id=new_run_id or uuid.uuid4().hex,
            agent=self.name,
            version=self.version,
            state=state,
            seq=0,
            status=self.status_in(state),
            memory=memory,
            created_at=created,
            updated_at=created,
            deadline=self.deadline_in(state, created),
        )
        origin: dict[str, JsonValue] = {"forked_from": run_id, "at": at_seq}
        if memory_update:
            origin["memory_update"] = list(sorted(memory_update))
        start = Event(
            seq=0, trigger="start", kind="start", source="", dest=state, status=record.status,
            key=f"{record.run_id}:start", patch=memory, output=origin, started_at=created,
            ended_at=created, deadline=record.deadline,
            # The conversation so far comes along, so LLM steps of the fork go on from it.
            messages=[m for e in history[: at_seq + 1] for m in e.messages],
        )  # fmt: skip
        if not await store.restore(record, [start]):
            raise RunError(f"a run with id {record.run_id!r} exists: pick another new_run_id")
        stored = record
        return self._open(store, stored, lease_wait)

    async def submit(
        self, store: Store, memory: M | Mapping[str, Any], *, run_id: str | None = None
    ) -> str:
        """Create a run (or find the one with `run_id`) and queue it for the workers
        (`Worker`, `agentfsm worker`); returns its id. Safe to retry with the same `run_id`:
        the run is created once, and a job queued twice is carried out once."""
        run = await self.start(store, memory, run_id=run_id)
        await _queue(store).enqueue(self.name, run.run_id)
        return run.run_id

    async def enqueue(self, store: Store, run_id: str) -> None:
        """Queue a stored run for the workers: to go on after a stop, or after `retry`."""
        if await store.load(run_id) is None:
            raise RunNotFound(run_id)
        await _queue(store).enqueue(self.name, run_id)

    async def deliver(
        self, store: Store, run_id: str, event: str, payload: JsonValue = None
    ) -> None:
        """Queue `event` for a worker to deliver to the run (as `Run.send`), then drive it.

        The payload is checked against the wait step's schema first; a bad one raises
        `InvalidPayload` and nothing is queued."""
        run = await self.resume(store, run_id)
        waits = [
            t for rows in self.table.out.values() for t in rows if t.trigger == event and t.waits
        ]
        if not waits:
            raise RunError(f"machine {self.name!r} has no wait for event {event!r}")
        check = getattr(waits[0].step, "check_payload", None)
        if check is not None:
            payload = check(payload)
        await _queue(store).enqueue(self.name, run.run_id, "event", event=event, payload=payload)

    async def resume(self, store: Store, run_id: str, *, lease_wait: float = 0.0) -> Run[M]:
        """The stored run `run_id`, ready to go on from its last commit, in any process.

        Raises `RunNotFound`, `VersionMismatch`, or `InvalidMemory` for a stored memory that
        no longer fits the schema. `lease_wait` is how long `step()` waits for a lease held
        by another process before raising `RunLocked`.
        """
        stored = await store.load(run_id)
        if stored is None:
            raise RunNotFound(run_id)
        if needs_upgrade(self, stored):
            stored = await upgrade(self, store, stored, lease_wait)
        return self._open(store, stored, lease_wait)

    def run_sync(
        self,
        store: Store,
        memory: M | Mapping[str, Any],
        *,
        run_id: str | None = None,
    ) -> Run[M]:
        """Start (or find) a run and drive it until it is done, failed or waiting; for scripts."""

        async def go() -> Run[M]:
            run = await self.start(store, memory, run_id=run_id)
            return await run.until_done()

        return asyncio.run(go())

    def _open(self, store: Store, record: RunRecord, lease_wait: float) -> Run[M]:
        if record.agent != self.name:
            raise RunError(
                f"run {record.run_id!r} belongs to {record.agent!r}, not to {self.name!r}"
            )
        if record.version != self.version:
            raise VersionMismatch(
                f"run {record.run_id!r} was stored by {record.agent!r} version {record.version};"
                f" this is version {self.version}"
            )
        if record.state not in self.table.states:
            raise VersionMismatch(
                f"run {record.run_id!r} is in state {record.state!r}, which {self.name!r}"
                f" version {self.version} does not have"
            )
        memory = self.validate_memory(record.memory, f"stored run {record.run_id!r}")
        return Run(self, store, record, memory, lease_wait=lease_wait)


def _queue(store: Store) -> RunQueue:
    from storage import RedisStore  # loaded here: `statemachine` imports no Redis code
    from storage.queue import RunQueue

    if not isinstance(store, RedisStore):
        raise TypeError(
            f"the run queue lives in Redis: workers need a RedisStore, not {type(store).__name__}"
            " (on the embedded store, drive runs with start/resume and until_done)"
        )
    return RunQueue(store)
