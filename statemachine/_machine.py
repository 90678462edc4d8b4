"""`Machine`: a declared, checked state table with a typed memory, and the way to run it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, JsonValue, ValidationError

from storage import Event, Lease, RunRecord, RunStatus, Store
from storage.base import check_run_id
from storage.errors import Unstorable
from storage.process import owner_id

from . import _handoff
from ._draw import Graph, draw
from ._ledger import json_size
from ._live import Started
from ._migrate import Migration, check_migrations, needs_upgrade, upgrade
from ._new_runs import fork_plan, new_record
from ._runner import Run
from ._spec import AfterCommit, ChargeOf
from ._table import Transition
from ._tracing import RunTrace
from ._validate import Table, check_machine_name, compile_table
from ._watch import WatchItem, watch
from .errors import (
    InvalidMemory,
    MemoryTooLarge,
    NoTransition,
    RunError,
    RunNotFound,
    VersionMismatch,
)

__all__ = ["DEFAULT_MAX_MEMORY", "Machine"]

M = TypeVar("M", bound=BaseModel)
_log = logging.getLogger("agentfsm")

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
            of that in the background). A holder on this machine whose process is gone is
            taken over at once; one elsewhere, once its lease expired.
        crash_retries: how often a step may be cut short by its process dying (counted
            durably, apart from the step's `retries`, which are for errors it raises) before
            the run goes to its failure state; a step's own `crash_retries` overrides it.
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
        halt_states: states a step may send the run to by raising `StepHalted` (a budget's
            state): reached without a transition of the table.
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
        crash_retries: int = 3,
        max_memory: int | None = DEFAULT_MAX_MEMORY,
        migrations: Mapping[int, Migration] | None = None,
        state_renames: Mapping[str, str] | None = None,
        retention: float | None = None,
        halt_states: Sequence[str] = (),
    ) -> None:
        if not isinstance(memory, type) or not issubclass(memory, BaseModel):
            raise TypeError(f"memory must be a pydantic model class, not {memory!r}")
        if not isinstance(version, int) or version < 1:
            raise ValueError(f"version must be a positive int, not {version!r}")
        if lease_ttl <= 0:
            raise ValueError(f"lease_ttl must be positive, not {lease_ttl}")
        if not isinstance(crash_retries, int) or crash_retries < 0:
            raise ValueError(f"crash_retries must be an int, 0 or more, not {crash_retries!r}")
        self.crash_retries = crash_retries
        if max_memory is not None and max_memory < 1:
            raise ValueError(f"max_memory must be positive bytes (or None), not {max_memory}")
        self.max_memory = max_memory
        if retention is not None and not retention > 0:
            raise ValueError(f"retention must be positive seconds (or None), not {retention}")
        self.retention = retention
        self.after_commit: list[AfterCommit] = []
        """Called with the run and each event it committed, and again with its last event
        whenever a process picks the run up (so must be idempotent by the event's key):
        ledgers beside the run (a budget scope's) are kept this way. Read when a run is
        opened (`start`, `resume`, `run`): add hooks before."""
        self.scope_charge: ChargeOf | None = None
        """Called before each commit with the run's memory after it, the event and the store:
        a `storage.base.ScopeCharge` the store makes with the commit, once (`Store.commit`), or
        None. Opaque here: an agent's budget sets it."""
        self.name = check_machine_name(name)
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
            halts=halt_states,
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
        return await _handoff.fire_due(self, store, limit=limit, drive=drive)

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
        except ValueError as exc:  # pydantic gives up on values nested some 250 levels deep
            given = memory if isinstance(memory, Mapping) else dict(memory)
            _stored_size(given, where)  # says which field no store would keep, if one
            if isinstance(exc, ValidationError):
                raise InvalidMemory(where, exc) from None
            raise

    async def start(
        self,
        store: Store,
        memory: M | Mapping[str, Any],
        *,
        run_id: str | None = None,
        lease_wait: float | None = None,
        hold: bool = False,
    ) -> Run[M]:
        """Create a run in the initial state; with the `run_id` of a run that exists, return
        that run instead (so a client may retry `start` safely).

        Nothing runs until `Run.step()` or `Run.until_done()`. `lease_wait` as for `resume`.
        `hold=True` takes the run's lease in the same round trip (`Store.start`), as the
        first `step()` would: for a caller that drives the run now. The run is then held
        until `until_done()`, `release()` or a commit that leaves it not running gives it
        back, so another process cannot resume it meanwhile; a run another process holds is
        returned unheld (its `step()` waits for the lease, as always).
        """
        return await self._start(store, memory, run_id, lease_wait, hold=hold, driven=False)

    async def _start(
        self,
        store: Store,
        memory: M | Mapping[str, Any],
        run_id: str | None,
        lease_wait: float | None,
        *,
        hold: bool,
        driven: bool,
    ) -> Run[M]:
        """`start`; `driven`: the caller runs the first step right away (`run`), so a new run
        is stored with that step's "started" live item, which crash accounting needs stored
        before the step runs (`_crashes`), in the start's own round trip."""
        if run_id is not None:
            check_run_id(run_id)
        model, fields = self._storable(memory, f"starting {self.name!r}")
        record, traced = new_record(self, run_id, self.table.initial, fields)
        lease: Lease | None = None
        first = self._first_step(model) if hold and driven else None
        if hold:
            owner = owner_id()
            live = [(0, first.item)] if first else []
            stored, got = await store.start(record, owner=owner, ttl=self.lease_ttl, live=live)
            lease = got if isinstance(got, Lease) else None
        else:
            stored = await store.create(record)
        created = stored.trace == record.trace
        traced.created(created)
        if needs_upgrade(self, stored):  # a run of that id, stored by an older version
            if lease is not None:
                await store.release_lease(lease)
                lease = None
            stored = await upgrade(self, store, stored, lease_wait)
        run = self._open(store, stored, lease_wait, lease=lease)
        if first is not None and created and lease is not None:
            run.live.stored(first)
        return run

    def _first_step(self, memory: M) -> Started | None:
        """The "started" item of a new run's first step (None when it has no step to run, or
        its guards fail: the step itself then says why)."""
        try:
            t = self.next_transition(self.table.initial, memory)
        except Exception:
            return None
        if t.step is None or t.waits:
            return None
        return Started(0, t.trigger, 1, t.step.kind, t.step.label)

    def wait_transition(self, record: RunRecord, memory: M, event: str) -> Transition:
        """The wait transition `event` fires in run `record` (with `memory`); else
        `RunError` saying what the run is and waits for. The one rule of `send`."""
        rows = self.table.out.get(record.state, ())
        expected = [t.trigger for t in rows if t.waits]
        if record.status != "waiting" or event not in expected:
            waiting_for = (
                f"waits for {expected}" if record.status == "waiting" else "is not waiting"
            )
            raise RunError(
                f"run {record.run_id!r} does not accept event {event!r}: it is {record.status} in"
                f" state {record.state!r} and {waiting_for}"
            )
        candidates = [t for t in rows if t.trigger == event]
        t = next((t for t in candidates if t.guard is None or t.guard(memory)), None)
        if t is None:
            raise RunError(f"run {record.run_id!r}: every guard on event {event!r} returned False")
        return t

    def storable_memory(self, memory: M | Mapping[str, Any], where: str) -> dict[str, JsonValue]:
        """`memory` checked as a new run's (`start`, `fork`): valid, storable, within
        `max_memory`; as JSON fields. `InvalidMemory` or `MemoryTooLarge` naming `where`."""
        return self._storable(memory, where)[1]

    def _storable(
        self, memory: M | Mapping[str, Any], where: str
    ) -> tuple[M, dict[str, JsonValue]]:
        """`storable_memory`, and the memory validated (what the guards of the first
        transition are asked about)."""
        model = self.validate_memory(memory, where)
        fields: dict[str, JsonValue] = model.model_dump(mode="json")
        size = _stored_size(fields, where)
        if self.max_memory is not None and size > self.max_memory:
            raise MemoryTooLarge(
                f"{where}: the memory takes {size} bytes as JSON, over the limit of"
                f" {self.max_memory} (Agent(max_memory=...))"
            )
        return model, fields

    async def fork(
        self,
        store: Store,
        run_id: str,
        at_seq: int,
        *,
        new_run_id: str | None = None,
        memory_update: Mapping[str, Any] | None = None,
        lease_wait: float | None = None,
    ) -> Run[M]:
        """A new run that starts where run `run_id` was right after commit `at_seq`, with
        `memory_update` applied to its memory: to try another path from a past point. The
        original is untouched; the new run's creation event names it (`forked_from`, `at`).
        Nothing runs until `step()` / `until_done()`."""
        record, start, traced = await self.fork_plan(
            store, run_id, at_seq, new_run_id=new_run_id, memory_update=memory_update
        )
        if not await store.restore(record, [start]):
            raise RunError(f"a run with id {record.run_id!r} exists: pick another new_run_id")
        traced.created(True)
        return self._open(store, record, lease_wait)

    async def fork_plan(
        self,
        store: Store,
        run_id: str,
        at_seq: int,
        *,
        new_run_id: str | None = None,
        memory_update: Mapping[str, Any] | None = None,
    ) -> tuple[RunRecord, Event, RunTrace]:
        """`fork`'s checks, writing nothing: the new run's record, its creation event and
        its trace; or the error `fork` would raise."""
        return await fork_plan(
            self, store, run_id, at_seq, new_run_id=new_run_id, memory_update=memory_update
        )

    async def submit(
        self, store: Store, memory: M | Mapping[str, Any], *, run_id: str | None = None
    ) -> str:
        """Create a run (or find the one with `run_id`) and queue it for the workers
        (`Worker`, `agentfsm worker`); returns its id. Safe to retry with the same `run_id`:
        the run is created once, and a job queued twice is carried out once."""
        return await _handoff.submit(self, store, memory, run_id)

    async def enqueue(self, store: Store, run_id: str) -> None:
        """Queue a stored run for the workers: to go on after a stop, or after `retry`."""
        await _handoff.enqueue(self, store, run_id)

    async def deliver(
        self, store: Store, run_id: str, event: str, payload: JsonValue = None
    ) -> None:
        """Queue `event` for a worker to deliver to the run (as `Run.send`), then drive it.

        The payload is checked against the wait step's schema first; a bad one raises
        `InvalidPayload` and nothing is queued. So does one that would take the memory past
        `max_memory` (`MemoryTooLarge`) or that no store would read back (`InvalidMemory`)."""
        await _handoff.deliver(self, store, run_id, event, payload)

    async def resume(self, store: Store, run_id: str, *, lease_wait: float | None = None) -> Run[M]:
        """The stored run `run_id`, ready to go on from its last commit, in any process.

        Raises `RunNotFound`, `VersionMismatch`, or `InvalidMemory` for a stored memory that
        no longer fits the schema. `lease_wait` is how long `step()` waits for a lease held
        by another live process before raising `RunLocked` (default: the lease TTL, so a
        restarted process goes on once a crashed holder elsewhere has lost its lease; one on
        this machine whose process is gone is taken over at once).
        """
        stored = await store.load(run_id)
        if stored is None:
            raise RunNotFound(run_id)
        if needs_upgrade(self, stored):
            stored = await upgrade(self, store, stored, lease_wait)
        return self._open(store, stored, lease_wait)

    def watch(
        self, store: Store, run_id: str, *, after: str | None = None, follow: bool = False
    ) -> AsyncIterator[WatchItem]:
        """`Run.watch` by run id, without opening the run (any process, any time)."""
        return watch(store, run_id, after=after, follow=follow)

    async def run(
        self,
        store: Store,
        memory: M | Mapping[str, Any],
        *,
        run_id: str | None = None,
    ) -> Run[M]:
        """Start (or find) a run and drive it until it is done, failed or waiting, in one call:
        `await agent.run(store, memory, run_id="r1")`.

        A run of that id that had failed before is returned as it is, with a warning on the
        "agentfsm" logger saying why and how to retry it (`run.error` holds the reason).
        """
        run = await self._start(store, memory, run_id, None, hold=True, driven=True)
        failed_before = run.status == "failed"
        await run.until_done()
        if failed_before:  # nothing ran: a script run again must not just print "failed"
            error = run.error or {}
            _log.warning(
                "run %r had failed before this call, at step %r (%s: %s); nothing ran."
                " Retry it from there with `await run.retry()` then `await run.until_done()`"
                " (or `agentfsm retry %s --agent MODULE:AGENT`), or start a new run_id",
                run.run_id, error.get("trigger"), error.get("type"), error.get("message"),
                run.run_id,
            )  # fmt: skip
        return run

    def run_sync(
        self,
        store: Store,
        memory: M | Mapping[str, Any],
        *,
        run_id: str | None = None,
    ) -> Run[M]:
        """`run`, for scripts without an event loop. Inside one (Jupyter, an async app) it
        raises `RunError`: use `await agent.run(...)` there."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.run(store, memory, run_id=run_id))
        raise RunError(
            f"{self.name}.run_sync() was called inside a running event loop (Jupyter, an async"
            " app), where it cannot wait: use `await agent.run(store, memory, run_id=...)`"
        )

    def _open(
        self,
        store: Store,
        record: RunRecord,
        lease_wait: float | None,
        *,
        lease: Lease | None = None,
    ) -> Run[M]:
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
        wait = self.lease_ttl if lease_wait is None else lease_wait
        return Run(self, store, record, memory, lease_wait=wait, lease=lease)


def _stored_size(fields: Mapping[str, JsonValue], where: str) -> int:
    """Bytes of the memory as JSON; `InvalidMemory` naming a field that would not read
    back equal (a NaN, nesting deeper than `storage` keeps)."""
    try:
        return sum(json_size(value, f"memory field {name!r}") for name, value in fields.items())
    except Unstorable as exc:
        raise InvalidMemory(where, str(exc)) from None
