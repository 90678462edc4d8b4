"""`Run`: one execution of a machine, driven one durable transition at a time.

The protocol, as `Run.step` shows it: pick the transition out of the current state → run its
step under its idempotency key (`_keys.step_key`: the same for every try of the transition) →
ONE `Store.commit` that checks the key, the seq and the fencing token and writes the new
state, the memory patch and the event → handle the outcome. The lease is taken once and
renewed in the background, so the hot path is that one commit.

Each try of a step works on its own copy of the memory: a try that timed out or was abandoned
(a sync tool's thread runs on after its timeout) can change nothing a later commit writes.
Process deaths during a step count against the step's `crash_retries`, apart from its
`retries`, which are for errors the step raises.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import pydantic_core
from pydantic import BaseModel, JsonValue, ValidationError

from storage import (
    Committed,
    Conflict,
    Duplicate,
    Event,
    Lease,
    LeaseHeld,
    RunRecord,
    RunStatus,
    StorageError,
    Store,
)
from storage._process import owner_id
from storage.base import json_bytes
from storage.errors import Unstorable

from ._keys import control_key, enters, step_key
from ._live import Publisher
from ._provenance import Provenance, memory_at, why
from ._step import StepContext, StepResult
from ._table import Transition
from ._watch import WatchItem, watch
from .errors import (
    InvalidMemory,
    InvalidPayload,
    MemoryTooLarge,
    NotDue,
    RunError,
    RunLocked,
    RunNotFound,
    RunTakenOver,
    UnstorableResult,
)

if TYPE_CHECKING:
    from ._machine import Machine

__all__ = ["Run", "check_payload_storable", "json_size", "now", "take_lease"]

M = TypeVar("M", bound=BaseModel)

now = time.time


async def take_lease(store: Store, run_id: str, owner: str, ttl: float, wait: float) -> Lease:
    """The run's lease, waiting up to `wait` seconds for another holder's to expire.
    Raises `RunLocked` (held by someone else) or `RunNotFound`."""
    deadline = now() + wait
    while True:
        try:
            got = await store.acquire_lease(run_id, owner, ttl)
        except KeyError:
            raise RunNotFound(run_id) from None
        if not isinstance(got, LeaseHeld):
            return got
        if now() >= deadline:
            raise RunLocked(run_id, got.owner, got.expires_in)
        await asyncio.sleep(min(max(got.expires_in, 0.01), 0.25, max(deadline - now(), 0.01)))


def json_size(value: JsonValue, where: str = "a value") -> int:
    """Bytes `value` takes as compact JSON, as the stores write it; `storage.errors.
    Unstorable` naming `where` for a value that would not read back equal."""
    return len(json_bytes(value, where))


SNAPSHOT_EVERY = 64 * 1024
"""Bytes of patches between two snapshots of the memory, at least."""
_NOT_TABLE_EDGES = frozenset({"start", "error", "control", "timeout"})
"""Event kinds the runner writes itself; every other event is a table transition firing."""
_log = logging.getLogger("statemachine.runner")


class _StepFailed(Exception):
    """A step gave up: its last error, and the try it happened on."""

    def __init__(
        self,
        error: BaseException,
        attempt: int,
        spent: dict[str, int] | None = None,
        *,
        final: bool = False,
    ) -> None:
        super().__init__(str(error))
        self.error = error
        self.attempt = attempt
        self.spent = spent or None
        self.final = final
        """Past any detour: the run goes to the machine's failure state (a spent loop)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class _Settled(Generic[M]):
    """A step's result as its commit will write it: checked, and storable as JSON."""

    result: StepResult[M]
    dest: str
    patch: dict[str, JsonValue]
    memory: M
    patch_sizes: dict[str, int]
    output: JsonValue


def _storable(t: Transition, what: str, value: object) -> JsonValue:
    """`value` as JSON-able data, or `UnstorableResult` naming `what` and the trouble: also
    what would not read back equal (NaN, nesting too deep; see `storage.base.json_bytes`)."""
    try:
        jsonable: JsonValue = pydantic_core.to_jsonable_python(value)
        json_bytes(jsonable, what)  # also catches bytes that are not UTF-8 text
    except (pydantic_core.PydanticSerializationError, ValueError, TypeError) as exc:
        raise _unstorable(t, what, value, exc) from None
    return jsonable


def _sized(t: Transition, what: str, value: JsonValue) -> int:
    """`json_size(value)`, or `UnstorableResult` as `_storable` says it."""
    try:
        return json_size(value, what)
    except Unstorable as exc:
        raise _unstorable(t, what, value, exc) from None


def _unstorable(t: Transition, what: str, value: object, exc: Exception) -> UnstorableResult:
    problem: object = exc
    if isinstance(exc, Unstorable):
        problem = exc.problem
    else:  # pydantic's words ("Circular reference detected"): say where, and what, in ours
        try:
            json_bytes(value, what)
        except Unstorable as ours:
            problem = ours.problem
    return UnstorableResult(
        f"step {t.trigger!r} returned what cannot be stored as JSON in {what}"
        f" ({type(value).__name__}): {problem}; return JSON-able data (str, finite numbers,"
        " bool, None, lists, dicts, pydantic models)"
    )


def _memory_dump(t: Transition, memory: BaseModel) -> dict[str, JsonValue]:
    """The memory's fields as JSON, or `UnstorableResult` naming the field that is not."""
    try:
        dump: dict[str, JsonValue] = memory.model_dump(mode="json", warnings=False)
    except (pydantic_core.PydanticSerializationError, ValueError, TypeError):
        for name in type(memory).model_fields:
            _storable(t, f"memory field {name!r}", getattr(memory, name))
        raise  # every field alone was storable: not ours to explain
    return dump


class Run(Generic[M]):
    """A run of a `Machine`. Get one from `Machine.start` or `Machine.resume`.

    `memory` is the memory as last committed. Drive the run with `step()` (one transition)
    or `until_done()`; both take the run's lease on first use, and `until_done()` gives it
    back. Use `async with run:` to make sure a lease taken by `step()` is released.
    """

    def __init__(
        self, machine: Machine[M], store: Store, record: RunRecord, memory: M, *, lease_wait: float
    ) -> None:
        self.machine = machine
        self.store = store
        self.memory = memory
        self.owner = owner_id()
        self.live = Publisher(store, record.run_id)
        """Where this run's progress is published for watchers (see `watch`)."""
        self._record = record
        self._fields: dict[str, JsonValue] = dict(record.memory)
        self._sizes: dict[str, int] | None = None
        self._since_snapshot = 0
        """Bytes of patches this process committed since the run's last snapshot."""
        self._lease: Lease | None = None
        self._renewer: asyncio.Task[None] | None = None
        self._lease_wait = lease_wait
        self._conversation: list[JsonValue] | None = None
        self._events: list[Event] | None = None
        """The run's events, read once per process and extended by its own commits."""
        self._visit_counts: dict[str, int] | None = None
        self._entered: int | None = 0 if record.seq == 0 else None
        """The seq at which the run entered its current state (None: not read yet)."""

    def __repr__(self) -> str:
        where = f"{self.state} seq={self.seq} {self.status}"
        return f"<Run {self.run_id!r} of {self.machine.name!r}: {where}>"

    @property
    def run_id(self) -> str:
        return self._record.run_id

    @property
    def state(self) -> str:
        return self._record.state

    @property
    def seq(self) -> int:
        return self._record.seq

    @property
    def status(self) -> RunStatus:
        return self._record.status

    @property
    def record(self) -> RunRecord:
        """The run as last committed (or loaded)."""
        return self._record

    @property
    def error(self) -> dict[str, JsonValue] | None:
        """Why a failed run failed: the last error event's "type", "message", "attempt",
        "step" kind, "trigger" and "seq" (known once `until_done()` returned); None when the
        run is not failed."""
        if self.status != "failed" or not self._events:
            return None
        failed = next((e for e in reversed(self._events) if e.error), None)
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

    async def __aenter__(self) -> Run[M]:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.release()

    async def until_done(self, on_event: Callable[[Event], object] | None = None) -> Run[M]:
        """Commit transitions until the run is done, failed or waiting; then release it.

        `on_event` is called with each event right after it commits (for progress output).
        """
        try:
            while self.status == "running":
                event = await self.step()
                if on_event is not None and event is not None:
                    on_event(event)
        finally:
            await self.release(quiet=True)
            await self.live.drain()
        if self.status == "failed":  # read once, so that `error` can say why
            await self._load_events()
        return self

    async def step(self) -> Event | None:
        """Run and commit one transition; None when the run is not `running`.

        Raises `NoTransition` when no guard passes (nothing is written), `RunLocked` when
        another process holds the run, `RunTakenOver` when this process lost it.
        """
        if self.status != "running":
            return None
        lease = await self._hold()
        if self.status != "running":  # another process moved it on while it held the run
            return None
        t = self.machine.next_transition(self.state, self.memory)
        return await self._fire(lease, t, None)

    async def send(self, event: str, payload: JsonValue = None) -> Event:
        """Deliver `event` to a waiting run: commit the transition that waits for it.

        The payload is checked against the wait step's schema before anything is written.
        Raises `RunError` when the run is not waiting for this event (nothing is written);
        two processes sending the same event commit it once: the second finds the run moved.
        Like `step()`, this takes the run's lease: go on with `until_done()` or `release()`.
        """
        t, checked = self._accept(event, payload)  # refuse before taking the lease
        await self._rehearse(t, checked)
        lease = await self._hold()
        try:
            t, checked = self._accept(event, payload)  # the run may have moved meanwhile
        except (RunError, ValueError):
            await self.release(quiet=True)
            raise
        return await self._fire(lease, t, checked)

    def _accept(self, event: str, payload: JsonValue) -> tuple[Transition, JsonValue]:
        """The wait transition `event` fires from here, and the checked payload; or an error."""
        rows = self.machine.table.out.get(self.state, ())
        expected = [t.trigger for t in rows if t.waits]
        if self.status != "waiting" or event not in expected:
            waiting_for = f"waits for {expected}" if self.status == "waiting" else "is not waiting"
            raise RunError(
                f"run {self.run_id!r} does not accept event {event!r}: it is {self.status} in"
                f" state {self.state!r} and {waiting_for}"
            )
        candidates = [t for t in rows if t.trigger == event]
        t = next((t for t in candidates if t.guard is None or t.guard(self.memory)), None)
        if t is None:
            raise RunError(f"run {self.run_id!r}: every guard on event {event!r} returned False")
        check_payload_storable(event, payload)
        check = getattr(t.step, "check_payload", None)
        return t, check(payload) if check is not None else payload

    async def _rehearse(self, t: Transition, payload: JsonValue) -> None:
        """Apply wait `t` with `payload` to a copy of the memory, writing nothing: raises
        what committing it would meet (`MemoryTooLarge`, `InvalidMemory`,
        `UnstorableResult`)."""
        if t.step is None:
            return
        ctx = StepContext(
            run_id=self.run_id, seq=self.seq, trigger=t.trigger, attempt=1, idempotency_key="",
            conversation=self._load_conversation, history=self._load_events, payload=payload,
            spent={},
        )  # fmt: skip
        try:
            mine = self.machine.memory_type.model_validate(self._fields)
            self._settle(t, await t.step.run(mine, ctx))
        except _StepFailed as failed:
            raise failed.error from None

    async def _fire(self, lease: Lease, t: Transition, payload: JsonValue) -> Event:
        """Run `t`'s step and commit its outcome: the one path every transition takes."""
        seq = self.seq
        key = await self.idempotency_key(t.trigger)
        started = now()
        try:
            if t.max_visits is not None and await self._visits(t) >= t.max_visits:
                raise _StepFailed(
                    RunError(
                        f"transition {t.trigger!r} reached its limit of {t.max_visits} visits"
                    ),
                    1,
                    final=True,  # a detour could lead back here: the loop ends for good
                )
            # Holders that died since the last commit died running this very step.
            done, attempt = await self._run_step(t, seq, key, self._record.crashes, payload)
        except _StepFailed as failed:
            if t.waits and isinstance(failed.error, ValueError | UnstorableResult):
                # The event's payload would break the run: refuse it, the run waits on.
                await self.release(quiet=True)
                raise failed.error from None
            return await self._fail(t, seq, key, failed, started)
        result = done.result
        event = Event(
            seq=seq + 1,
            trigger=t.trigger,
            kind=t.step.kind if t.step else "move",
            source=self.state,
            dest=done.dest,
            status=self.machine.status_in(done.dest),
            key=key if result.subkey is None else f"{key}:{result.subkey}",
            patch=done.patch,
            output=done.output,
            attempt=attempt,
            started_at=started,
            ended_at=now(),
            worker=self.owner,
            usage=result.usage,
            messages=result.messages,
            step=t.step.label if t.step else "",
        )
        return await self._commit(lease, event, done.memory, done.patch_sizes)

    async def idempotency_key(self, trigger: str) -> str:
        """The key every try of `trigger` out of the current state runs under (see
        `statemachine._keys`): the same after a crash, an error and `retry()`, new on the
        next visit of the state."""
        if self._entered is None:
            self._entered = await self._entered_at()
        return step_key(self._record, self._entered, trigger)

    async def _entered_at(self) -> int:
        """The seq of the last commit that entered the current state, read back from the
        latest event a page at a time (usually one event: the last commit is the visit)."""
        high, page = self.seq, 1
        while True:
            low = max(high - page + 1, 0)
            for event in reversed(await self.store.history(self.run_id, low, high)):
                if enters(event):
                    return event.seq
            if low == 0:
                return 0
            high, page = low - 1, page * 4

    async def _visits(self, t: Transition) -> int:
        """How often `t` fired in this run so far (read from the history once per process)."""
        if self._visit_counts is None:
            counts: dict[str, int] = {}
            for e in await self.store.history(self.run_id):
                if e.kind not in _NOT_TABLE_EDGES:
                    counts[e.trigger] = counts.get(e.trigger, 0) + 1
            self._visit_counts = counts
        return self._visit_counts.get(t.trigger, 0)

    async def retry(self) -> Event:
        """Put a failed run back in the state it failed from, status `running`.

        This is a new committed event ("retry"), not a rewrite of history.
        """
        if self.status != "failed":
            raise RunError(f"run {self.run_id!r} is {self.status}, not failed: nothing to retry")
        await self._hold()
        last = await self.store.history(self.run_id, self.seq)
        back = last[0].source if last and last[0].kind == "error" else self.state
        return await self._control("retry", back, self.machine.status_in(back))

    async def cancel(self, reason: str = "") -> Event:
        """Stop the run for good (status `cancelled`), recorded as an event with `reason`."""
        await self._hold()
        if self.status in ("done", "cancelled"):
            raise RunError(f"run {self.run_id!r} is already {self.status}")
        return await self._control("cancel", self.state, "cancelled", output=reason or None)

    async def fire_timeout(self) -> Event:
        """Send a waiting run whose deadline has passed to its timeout state.

        Recorded as an event of kind "timeout" with the wait's trigger. Raises `NotDue`
        (nothing written) when the run is not waiting, has no deadline, or it is not yet
        reached; an event that arrived first wins: the run has moved on.
        """
        lease = await self._hold()
        deadline = self._record.deadline
        timed = self.machine.table.timeouts.get(self.state)
        if self.status != "waiting" or timed is None or deadline is None or deadline > now():
            await self.release(quiet=True)
            when = "" if deadline is None else f" (deadline in {deadline - now():.3g} s)"
            raise NotDue(
                f"run {self.run_id!r} has no timeout due: it is {self.status} in state"
                f" {self.state!r}{when}"
            )
        assert timed.on_timeout is not None  # checked with the table
        at = now()
        event = Event(
            seq=self.seq + 1,
            trigger=timed.trigger,
            kind="timeout",
            source=self.state,
            dest=timed.on_timeout,
            status=self.machine.status_in(timed.on_timeout),
            key=f"{await self.idempotency_key(timed.trigger)}:timeout",
            output={"deadline": deadline, "timeout": timed.timeout},
            started_at=at,
            ended_at=at,
            worker=self.owner,
        )
        return await self._commit(lease, event, self.memory)

    async def _control(
        self, trigger: str, dest: str, status: RunStatus, output: JsonValue = None
    ) -> Event:
        """Commit a transition of the runner's own (not from the table)."""
        lease = await self._hold()
        at = now()
        event = Event(
            seq=self.seq + 1,
            trigger=trigger,
            kind="control",
            source=self.state,
            dest=dest,
            status=status,
            key=control_key(self._record, trigger),
            output=output,
            started_at=at,
            ended_at=at,
            worker=self.owner,
        )
        return await self._commit(lease, event, self.memory)

    async def release(self, *, quiet: bool = False) -> None:
        """Give the run's lease back, if this process holds it."""
        lease, self._lease = self._lease, None
        if self._renewer is not None:
            self._renewer.cancel()
            self._renewer = None
        if lease is None:
            return
        try:
            await self.store.release_lease(lease)
        except StorageError:
            if not quiet:
                raise
            # The lease expires on its own; the next holder then counts one crash.

    async def _hold(self) -> Lease:
        if self._lease is not None:
            return self._lease
        got = await take_lease(
            self.store, self.run_id, self.owner, self.machine.lease_ttl, self._lease_wait
        )
        self._lease = got
        if got.seq is not None and got.seq == self._record.seq:
            # Nothing was committed since this copy was read (every change is a commit, and
            # commits move the seq): only the holder and crash count are new.
            self._record = replace(self._record, holder=self.owner, crashes=got.crashes)
        else:
            # The run moved while another process held it: start from what is stored.
            await self._reload()
        self._renewer = asyncio.create_task(self._renew(got), name=f"lease:{self.run_id}")
        return got

    async def _renew(self, lease: Lease) -> None:
        while True:
            await asyncio.sleep(lease.ttl / 3)
            try:
                if not await self.store.renew_lease(lease):
                    return  # taken over; the next commit is refused and says so
            except StorageError:
                continue  # a blip; the lease is still ours until it expires

    async def _reload(self) -> None:
        stored = await self.store.load(self.run_id)
        if stored is None:
            raise RunNotFound(self.run_id, lost=True)
        if stored.seq != self._record.seq or stored.memory != self._fields:
            self.memory = self.machine.validate_memory(stored.memory, f"stored run {self.run_id!r}")
            self._fields = dict(stored.memory)
            self._sizes = None
            self._conversation = None
            self._events = None
            self._visit_counts = None
            self._entered = None
        self._record = stored

    async def _run_step(
        self, t: Transition, seq: int, key: str, crashes: int, payload: JsonValue
    ) -> tuple[_Settled[M], int]:
        """Try `t`'s step as its policy allows; what the try that worked produced, settled
        (destination, patch, output: all checked storable), and that try's attempt number."""
        if t.step is None:
            return self._settle(t, StepResult(memory=self.memory)), 1
        policy = t.step.policy
        # A process that died holding a waiting run was not running its wait step.
        died = 0 if t.waits else crashes
        allowance = (
            self.machine.crash_retries if policy.crash_retries is None else policy.crash_retries
        )
        if died > allowance:
            raise _StepFailed(
                RunError(
                    f"step {t.trigger!r} was cut short by its process dying {died} times"
                    f" (crash_retries={allowance}): it may be what kills the process; fix it,"
                    " then `retry` the run"
                ),
                died,
            )
        spent: dict[str, int] = {}
        tries = 0
        while True:
            tries += 1
            attempt = died + tries
            ctx = StepContext(
                run_id=self.run_id,
                seq=seq,
                trigger=t.trigger,
                attempt=attempt,
                idempotency_key=key,
                conversation=self._load_conversation,
                history=self._load_events,
                payload=payload,
                spent=spent,
                live=self.live.step(seq, attempt),
            )
            self.live.started(seq, t.trigger, attempt, t.step.kind, t.step.label)
            # Its own copy, as a resumed process would read it (and 5x cheaper than a deep
            # copy): a try abandoned on its timeout may go on changing it.
            mine = self.machine.memory_type.model_validate(self._fields)
            try:
                if policy.timeout is None:
                    result = await t.step.run(mine, ctx)
                else:
                    result = await asyncio.wait_for(t.step.run(mine, ctx), policy.timeout)
                return self._settle(t, result), attempt
            except _StepFailed:
                raise  # a result that can never commit (a bad route, memory, size)
            except Exception as exc:
                error: BaseException = exc
                if isinstance(exc, TimeoutError) and policy.timeout is not None:
                    error = TimeoutError(f"step {t.trigger!r} timed out after {policy.timeout}s")
                    _log.debug(
                        "run %s: try %d of %r timed out; whatever it still does is dropped",
                        self.run_id, attempt, t.trigger,
                    )  # fmt: skip
                retryable = policy.retries(exc) and not isinstance(exc, InvalidMemory)
                self.live.failed(seq, attempt, error, retryable and tries < policy.attempts)
                if not retryable or tries >= policy.attempts:
                    raise _StepFailed(error, attempt, spent) from exc
                await asyncio.sleep(policy.delay(tries, exc))

    def _settle(self, t: Transition, result: StepResult[M]) -> _Settled[M]:
        """Where `result` goes and what its commit writes; `UnstorableResult` naming the
        part that cannot be stored as JSON (the try fails), `_StepFailed` for a result no
        try can fix."""
        dest = self._dest(t, result)
        patch, memory, patch_sizes = self._changes(t, result.memory)
        return _Settled(
            result=result,
            dest=dest,
            patch=patch,
            memory=memory,
            patch_sizes=patch_sizes,
            output=_storable(t, "its output", result.output),
        )

    def _dest(self, t: Transition, result: StepResult[M]) -> str:
        if t.dest is not None:
            return t.dest
        if result.route in t.routes:
            return t.routes[result.route]  # type: ignore[index]  # checked just above
        raise _StepFailed(
            RunError(
                f"step {t.trigger!r} chose route {result.route!r}, which is not one of"
                f" {sorted(t.routes)}"
            ),
            1,
        )

    def _changes(self, t: Transition, new: M) -> tuple[dict[str, JsonValue], M, dict[str, int]]:
        """The memory patch (changed fields, as JSON), the checked new memory, and the bytes
        of each patched field as JSON (sized once, here, for the limit and the snapshots)."""
        if not isinstance(new, self.machine.memory_type):
            raise _StepFailed(
                TypeError(
                    f"a step returned {type(new).__name__} as memory,"
                    f" not {self.machine.memory_type.__name__}"
                ),
                1,
            )
        dump = _memory_dump(t, new)
        if dump == self._fields:
            return {}, self.memory, {}
        changed = {k: v for k, v in dump.items() if k not in self._fields or self._fields[k] != v}
        # Before the schema: a schema error on a value nested 200 deep is pages long.
        sizes_of = {k: _sized(t, f"memory field {k!r}", v) for k, v in changed.items()}
        try:
            checked = self.machine.memory_type.model_validate(dump)
        except ValidationError as exc:
            raise _StepFailed(InvalidMemory(f"run {self.run_id!r}", exc), 1) from None
        dump = checked.model_dump(mode="json", warnings=False)
        patch = {k: v for k, v in dump.items() if k not in self._fields or self._fields[k] != v}
        patch_sizes = {
            k: sizes_of[k] if k in changed and changed[k] == v else _sized(t, repr(k), v)
            for k, v in patch.items()
        }  # the schema may have coerced a value: sized (and checked) again
        limit = self.machine.max_memory
        if limit is not None:  # sized by the fields that change, not the whole memory
            sizes = self._field_sizes()
            size = sum(sizes.values()) + sum(n - sizes.get(k, 0) for k, n in patch_sizes.items())
            if size > limit:
                raise _StepFailed(
                    MemoryTooLarge(
                        f"run {self.run_id!r}: the step would make the memory {size} bytes as"
                        f" JSON, over the limit of {limit}; nothing was written"
                    ),
                    1,
                )
        return patch, checked, patch_sizes

    def _maybe_snapshot(self, event: Event, patch_bytes: int) -> Event:
        """`event` with a snapshot of the whole memory when the patches committed since the
        last one (in this process) add up to the memory's size: rebuilding the memory at any
        seq then replays at most about that much, and snapshots at most double the bytes
        written (at least SNAPSHOT_EVERY bytes apart, so small memories rarely take one)."""
        self._since_snapshot += patch_bytes
        if self._since_snapshot < max(sum(self._field_sizes().values()), SNAPSHOT_EVERY):
            return event
        memory = {**self._fields, **event.patch}
        for name in event.dropped:
            memory.pop(name, None)
        return replace(event, snapshot=memory)

    def _field_sizes(self) -> dict[str, int]:
        """Bytes of each memory field as JSON, kept up to date by commits."""
        if self._sizes is None:
            self._sizes = {k: json_size(v) for k, v in self._fields.items()}
        return self._sizes

    async def _fail(
        self, t: Transition, seq: int, key: str, failed: _StepFailed, started: float
    ) -> Event:
        lease = await self._hold()
        error = failed.error
        # The transition's own failure state may be a detour the run goes on from (status
        # of that state); the machine's failure state, or none, parks the run as failed.
        detour = None if failed.final else t.on_error
        dest = detour or self.machine.table.on_error or self.state
        status: RunStatus = "failed" if detour is None else self.machine.status_in(dest)
        event = Event(
            seq=seq + 1,
            trigger=t.trigger,
            kind="error",
            source=self.state,
            dest=dest,
            status=status,
            key=f"{key}:failed:{seq + 1}",
            attempt=failed.attempt,
            started_at=started,
            ended_at=now(),
            worker=self.owner,
            step=t.step.label if t.step else "",
            usage=failed.spent,
            error={
                "type": type(error).__name__,
                "message": str(error),
                "attempt": failed.attempt,
                "step": t.step.kind if t.step else "move",
            },
        )
        return await self._commit(lease, event, self.memory)

    async def _commit(
        self, lease: Lease, event: Event, memory: M, patch_sizes: dict[str, int] | None = None
    ) -> Event:
        deadline = self.machine.deadline_in(event.dest, event.ended_at or now())
        if deadline != event.deadline:
            event = replace(event, deadline=deadline)
        retention = self.machine.retention
        if retention is not None and event.status in ("done", "cancelled"):
            event = replace(event, expires_at=(event.ended_at or now()) + retention)
        if event.patch and patch_sizes is None:
            patch_sizes = {k: json_size(v) for k, v in event.patch.items()}
        if patch_sizes:
            event = self._maybe_snapshot(event, sum(patch_sizes.values()))
        try:
            outcome = await self.store.commit(
                self.run_id, expected_seq=event.seq - 1, token=lease.token, event=event
            )
        except KeyError:
            await self.release(quiet=True)
            raise RunNotFound(self.run_id, lost=True) from None
        if isinstance(outcome, Committed):
            self.live.committed(event)
            self._record = _advance(self._record, event)
            if enters(event):
                self._entered = event.seq
            if event.snapshot is not None:
                self._since_snapshot = 0
            for name in event.dropped:
                self._fields.pop(name, None)
                if self._sizes is not None:
                    self._sizes.pop(name, None)
            if event.patch:
                self._fields.update(event.patch)
                if self._sizes is not None and patch_sizes is not None:
                    self._sizes.update(patch_sizes)
            self.memory = memory
            if self._conversation is not None:
                self._conversation.extend(event.messages)
            if self._events is not None:
                self._events.append(event)
            if self._visit_counts is not None and event.kind not in _NOT_TABLE_EDGES:
                self._visit_counts[event.trigger] = self._visit_counts.get(event.trigger, 0) + 1
            return event
        if isinstance(outcome, Duplicate):
            # The key was committed before. By this process, on a try whose answer was lost:
            # go on from the stored run. By another process (this one lost the run and a new
            # holder did this step meanwhile): stop, as for any refused commit.
            stored = await self.store.history(self.run_id, outcome.seq)
            if stored and stored[0].seq == outcome.seq and stored[0].worker == self.owner:
                await self._reload()
                return stored[0]
            why = f"another process committed {event.trigger!r} as seq {outcome.seq}"
        elif isinstance(outcome, Conflict):
            why = f"it moved to seq {outcome.current_seq}"
        else:
            why = "its lease was taken over"
        await self.release(quiet=True)
        raise RunTakenOver(
            f"run {self.run_id!r}: commit of {event.trigger!r} at seq {event.seq} refused, {why};"
            " another process drives the run now"
        )

    async def _load_events(self) -> list[Event]:
        """For steps (`StepContext.history`): the events, without a read per step."""
        if self._events is None:
            self._events = await self.store.history(self.run_id)
        return list(self._events)

    async def _load_conversation(self) -> list[JsonValue]:
        if self._conversation is None:
            events = await self.store.history(self.run_id)
            self._conversation = [m for e in events for m in e.messages]
        return list(self._conversation)


def check_payload_storable(event: str, payload: object) -> None:
    """`InvalidPayload` for a payload no store would read back equal (checked before its
    schema: pydantic's errors on a value nested 200 deep are pages long)."""
    try:
        json_bytes(payload, f"the payload of event {event!r}")
    except Unstorable as exc:
        raise InvalidPayload(event, f"{exc.problem}; nothing was written") from None


def _advance(record: RunRecord, event: Event) -> RunRecord:
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
    )
