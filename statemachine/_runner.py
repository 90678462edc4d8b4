"""`Run`: one execution of a machine, driven one durable transition at a time.

The protocol, as `Run.step` shows it: pick the transition out of the current state → run its
step under its idempotency key (`_keys.step_key`: the same for every try of the transition) →
ONE `Store.commit` that checks the key, the seq and the fencing token and writes the new
state, the memory patch and the event → handle the outcome. What happens beside it (the
live channel, tracing, budget charges) is plugged in as named hooks (`_hooks`: before_step,
after_try_failed, before_commit, after_commit), not written into the loop. The lease is
taken once and renewed in the background (`_lease`), so the hot path is that one commit;
the commit that leaves the run not running gives the lease back itself. What the run keeps in memory
between commits (fields, sizes, the history it read) is its `_ledger`; results are made
ready to commit by `_settle`, and events are built by `_events`.

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
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from pydantic import BaseModel, JsonValue

from storage import (
    Committed,
    Conflict,
    Duplicate,
    Event,
    Lease,
    RunRecord,
    RunStatus,
    Store,
)
from storage.base import json_bytes
from storage.errors import Unstorable
from storage.process import owner_id
from storage.usage import added

from ._events import control_event, error_event, step_event, timeout_event
from ._hooks import ChargesHook, Hook, LiveHook, TracingHook
from ._keys import step_key
from ._lease import LeaseKeeper, take_lease
from ._ledger import SNAPSHOT_EVERY, Ledger, json_size
from ._live import Publisher
from ._provenance import Provenance, memory_at, why
from ._settle import Settled, StepFailed, settle
from ._step import StepContext, StepResult
from ._table import Transition
from ._tracing import transition_span
from ._watch import WatchItem, watch
from .errors import (
    CommitsLost,
    InvalidMemory,
    InvalidPayload,
    NotDue,
    RunError,
    RunNotFound,
    RunTakenOver,
    StepHalted,
    UnstorableResult,
)

if TYPE_CHECKING:
    from ._spec import MachineSpec

__all__ = ["SNAPSHOT_EVERY", "Run", "check_payload_storable", "json_size", "now", "take_lease"]

M = TypeVar("M", bound=BaseModel)

now = time.time

_log = logging.getLogger("statemachine.runner")


class Run(Generic[M]):
    """A run of a `Machine`. Get one from `Machine.start` or `Machine.resume`.

    `memory` is the memory as last committed. Drive the run with `step()` (one transition)
    or `until_done()`; both take the run's lease on first use, and `until_done()` gives it
    back. Use `async with run:` to make sure a lease taken by `step()` is released.
    """

    def __init__(
        self, machine: MachineSpec[M], store: Store, record: RunRecord, memory: M, *,
        lease_wait: float, lease: Lease | None = None,
    ) -> None:  # fmt: skip
        self.machine = machine
        self.store = store
        self.memory = memory
        self.live = Publisher(store, record.run_id)
        """Where this run's progress is published for watchers (see `watch`)."""
        self.hooks: tuple[Hook, ...] = (
            LiveHook(self.live), TracingHook(), ChargesHook(machine, store),
        )  # fmt: skip
        """The named hooks of the step protocol, in the order they run (see `_hooks`)."""
        self._record = record
        self._ledger = Ledger(store, record.run_id, record.memory, record.seq)
        owner = owner_id() if lease is None else lease.owner
        self._keeper = LeaseKeeper(store, record.run_id, owner, machine.lease_ttl, lease_wait)
        if lease is not None:  # taken with the run (`Machine.start(hold=True)`)
            self._keeper.keep(lease)
        self._told = None if lease is None else lease.acknowledged
        """Commits the store lost, as the lease taken with the run said: `_hold` names them."""
        self._announced = False
        """Whether a step began under the lease held (see `_deaths_in_step`)."""

    def __repr__(self) -> str:
        where = f"{self.state} seq={self.seq} {self.status}"
        return f"<Run {self.run_id!r} of {self.machine.name!r}: {where}>"

    @property
    def owner(self) -> str:
        """The lease owner id this run takes leases as, and names in its events."""
        return self._keeper.owner

    @owner.setter
    def owner(self, owner: str) -> None:  # a worker names itself in it (`Worker`)
        self._keeper.owner = owner

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
            await self._ledger.load_events()
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
        t = self.machine.wait_transition(self._record, self.memory, event)
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
            conversation=self._ledger.load_conversation, history=self._ledger.load_events,
            payload=payload, spent={},
        )  # fmt: skip
        try:
            mine = self.machine.memory_type.model_validate(self._ledger.fields)
            self._settle(t, await t.step.run(mine, ctx))
        except StepFailed as failed:
            raise failed.error from None

    async def _fire(self, lease: Lease, t: Transition, payload: JsonValue) -> Event:
        """`_run_and_commit`, in the transition's span (`_tracing`: current while it runs)."""
        with transition_span(self._record, t.trigger, t.step.kind if t.step else "move"):
            return await self._run_and_commit(lease, t, payload)

    async def _run_and_commit(self, lease: Lease, t: Transition, payload: JsonValue) -> Event:
        """Run `t`'s step and commit its outcome: the one path every transition takes."""
        seq = self.seq
        key = await self.idempotency_key(t.trigger)
        started = now()
        try:
            if t.max_visits is not None and await self._ledger.visits(t.trigger) >= t.max_visits:
                raise StepFailed(
                    RunError(
                        f"transition {t.trigger!r} reached its limit of {t.max_visits} visits"
                    ),
                    1,
                    final=True,  # a detour could lead back here: the loop ends for good
                )
            died = await self._deaths_in_step(seq) if self._record.crashes and not t.waits else 0
            done, attempt = await self._run_step(t, seq, key, died, payload)
        except StepFailed as failed:
            if t.waits and isinstance(failed.error, ValueError | UnstorableResult):
                # The event's payload would break the run: refuse it, the run waits on.
                await self.release(quiet=True)
                raise failed.error from None
            return await self._fail(t, seq, key, failed, started)
        except StepHalted as halted:
            return await self._halt(t, seq, key, halted, started)
        status = self.machine.status_in(done.dest)
        event = step_event(
            self._record, t, key, done, status, attempt=attempt, started=started, ended=now(),
            worker=self.owner,
        )  # fmt: skip
        return await self._commit(lease, event, done.memory, done.patch_sizes)

    async def _deaths_in_step(self, seq: int) -> int:
        """How many of the holders that died since commit `seq` died running the step after
        it: all of them (`RunRecord.crashes`) when one began it, none when each died before.

        A holder that took the lease publishes its first step's "started" item before it
        runs the step, and waits until it is stored (`Publisher.started_now`): no such item
        after `seq`, and no holder that committed `seq` and went straight on stepping (the
        last event is the run's start, or a command's: a retry, a raised budget), means every
        holder died before its first step, e.g. right after `start` took the lease."""
        crashes = self._record.crashes
        after: str | None = None
        while True:
            page = await self.store.live(self.run_id, after)
            if any(entry.base == seq for entry in page):
                return crashes
            if len(page) < 1000:
                break
            after = page[-1].id
        last = await self.store.history(self.run_id, seq, seq)
        went_on = bool(last) and last[0].kind not in ("start", "control")
        return crashes if went_on else 0

    async def idempotency_key(self, trigger: str) -> str:
        """The key every try of `trigger` out of the current state runs under (see
        `statemachine._keys`): the same after a crash, an error and `retry()`, new on the
        next visit of the state."""
        return step_key(self._record, await self._ledger.entered_at(self.seq), trigger)

    async def retry(self) -> Event:
        """Put a failed run back in the state it failed from, status `running`; likewise a
        run a step halted `waiting` (`StepHalted`: a budget), to try that step again.

        This is a new committed event ("retry"), not a rewrite of history.
        """
        if self.status not in ("failed", "waiting"):
            raise RunError(f"run {self.run_id!r} is {self.status}, not failed: nothing to retry")
        await self._hold()
        last = await self.store.history(self.run_id, self.seq)
        halted = self.status == "waiting" and bool(last) and last[0].kind == "halt"
        if self.status != "failed" and not halted:
            await self.release(quiet=True)
            raise RunError(f"run {self.run_id!r} is {self.status}, not failed: nothing to retry")
        back = last[0].source if last and last[0].kind in ("error", "halt") else self.state
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
        key = await self.idempotency_key(timed.trigger)
        status = self.machine.status_in(timed.on_timeout)
        event = timeout_event(
            self._record, timed, key, status, deadline, at=now(), worker=self.owner
        )
        return await self._commit(lease, event, self.memory)

    async def _control(
        self, trigger: str, dest: str, status: RunStatus, output: JsonValue = None
    ) -> Event:
        """Commit a transition of the runner's own (not from the table)."""
        lease = await self._hold()
        event = control_event(
            self._record, trigger, dest, status, output, at=now(), worker=self.owner
        )
        return await self._commit(lease, event, self.memory)

    async def release(self, *, quiet: bool = False) -> None:
        """Give the run's lease back, if this process holds it."""
        await self._keeper.release(quiet=quiet)

    async def _hold(self) -> Lease:
        if self._keeper.lease is not None and self._told is None:
            return self._keeper.lease
        got = self._keeper.lease or await self._keeper.take()  # (one taken with the run)
        self._told = None
        self._announced = False
        acknowledged = max(self._record.seq, got.acknowledged or 0)  # here, or before us
        if got.seq is not None and got.seq < acknowledged:
            await self.release(quiet=True)
            stored = await self.store.load(self.run_id)
            if stored is not None:
                raise await self._lost(stored, acknowledged)
        if got.seq is not None and got.seq == self._record.seq:
            # Nothing was committed since this copy was read (every change is a commit, and
            # commits move the seq): only the holder and crash count are new.
            self._record = replace(self._record, holder=self.owner, crashes=got.crashes)
        else:
            # The run moved while another process held it: start from what is stored.
            await self._reload()
        if self.machine.after_commit and self.seq > 0:  # a crash may have cut the last short
            last = await self.store.history(self.run_id, self.seq, self.seq)
            for hook in self.hooks:
                await hook.after_commit(self._record, last[0], again=True)
        return got

    async def _lost(self, stored: RunRecord, acknowledged: int | None = None) -> CommitsLost:
        """The store is behind what it acknowledged (to this process, or to one before it
        on this host: `Lease.acknowledged`): name the loss, and go back to what is stored
        (this `Run` may go on from there, as a resumed one would)."""
        acked = self.seq if acknowledged is None else acknowledged
        lost = CommitsLost(self.run_id, stored.seq, acked, stored.state)
        _log.error("%s", lost)
        await self._reload(stored)
        return lost

    async def _reload(self, stored: RunRecord | None = None) -> None:
        if stored is None:
            stored = await self.store.load(self.run_id)
        if stored is None:
            raise RunNotFound(self.run_id, lost=True)
        if stored.seq != self._record.seq or stored.memory != self._ledger.fields:
            self.memory = self.machine.validate_memory(stored.memory, f"stored run {self.run_id!r}")
            self._ledger.forget(stored.memory)
        self._record = stored

    async def _run_step(
        self, t: Transition, seq: int, key: str, died: int, payload: JsonValue
    ) -> tuple[Settled[M], int]:
        """Try `t`'s step as its policy allows (`died`: holders that died running it); what
        the try that worked produced, settled (destination, patch, output: all checked
        storable), and that try's attempt number."""
        if t.step is None:
            return self._settle(t, StepResult(memory=self.memory)), 1
        policy = t.step.policy
        allowance = (
            self.machine.crash_retries if policy.crash_retries is None else policy.crash_retries
        )
        if died > allowance:
            raise StepFailed(
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
                conversation=self._ledger.load_conversation,
                history=self._ledger.load_events,
                payload=payload,
                usage=self._record.usage,
                store=self.store,
                spent=spent,
                live=self.live.step(seq, attempt),
            )
            first = not (self._announced or t.waits)  # stored before it runs: crash accounting
            for hook in self.hooks:
                await hook.before_step(t, seq, attempt, first)
            self._announced = self._announced or first
            # Its own copy, as a resumed process would read it (and 5x cheaper than a deep
            # copy): a try abandoned on its timeout may go on changing it.
            mine = self.machine.memory_type.model_validate(self._ledger.fields)
            try:
                if policy.timeout is None:
                    result = await t.step.run(mine, ctx)
                else:  # in this task: wait_for would start a task per step
                    async with asyncio.timeout(policy.timeout):
                        result = await t.step.run(mine, ctx)
                return self._settle(t, result), attempt
            except StepFailed:
                raise  # a result that can never commit (a bad route, memory, size)
            except StepHalted as halted:
                halted.spent = dict(spent) or None
                raise
            except Exception as exc:
                error: BaseException = exc
                if isinstance(exc, TimeoutError) and policy.timeout is not None:
                    error = TimeoutError(f"step {t.trigger!r} timed out after {policy.timeout}s")
                    _log.debug(
                        "run %s: try %d of %r timed out; whatever it still does is dropped",
                        self.run_id, attempt, t.trigger,
                    )  # fmt: skip
                retryable = policy.retries(exc) and not isinstance(exc, InvalidMemory)
                gives_up = not retryable or tries >= policy.attempts
                for hook in self.hooks:
                    hook.after_try_failed(seq, attempt, error, not gives_up)
                if gives_up:
                    raise StepFailed(error, attempt, spent) from exc
                await asyncio.sleep(policy.delay(tries, exc))

    def _settle(self, t: Transition, result: StepResult[M]) -> Settled[M]:
        return settle(self.machine, self.run_id, self._ledger, self.memory, t, result)

    async def _fail(
        self, t: Transition, seq: int, key: str, failed: StepFailed, started: float
    ) -> Event:
        lease = await self._hold()
        # The transition's own failure state may be a detour the run goes on from (status
        # of that state); the machine's failure state, or none, parks the run as failed.
        detour = None if failed.final else t.on_error
        dest = detour or self.machine.table.on_error or self.state
        status: RunStatus = "failed" if detour is None else self.machine.status_in(dest)
        event = error_event(
            self._record, t, key, failed, dest, status, started=started, ended=now(),
            worker=self.owner,
        )  # fmt: skip
        return await self._commit(lease, event, self.memory)

    async def _halt(
        self, t: Transition, seq: int, key: str, halted: StepHalted, started: float
    ) -> Event:
        """Commit a step's `StepHalted`: to its `dest`, or parked `waiting` where it is."""
        lease = await self._hold()
        dest = halted.dest or self.state
        event = Event(
            seq=seq + 1, trigger=t.trigger, kind="halt", source=self.state, dest=dest,
            status="waiting" if halted.dest is None else self.machine.status_in(dest),
            key=f"{key}:halted:{seq + 1}", output=halted.output, started_at=started,
            ended_at=now(), worker=self.owner, step=t.step.label if t.step else "",
            usage=halted.spent,
        )  # fmt: skip
        return await self._commit(lease, event, self.memory)

    async def _commit(
        self, lease: Lease, event: Event, memory: M, patch_sizes: dict[str, int] | None = None
    ) -> Event:
        """`_commit_event`, in the transition's span (`_fire`'s, or one of its own)."""
        with transition_span(self._record, event.trigger, event.kind) as span:
            return span.committed(await self._commit_event(lease, event, memory, patch_sizes))

    async def _commit_event(
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
            event = self._ledger.with_snapshot(event, sum(patch_sizes.values()))
        extra: dict[str, Any] = {}
        for hook in self.hooks:
            extra.update(hook.before_commit(memory, event))
        try:
            outcome = await self.store.commit(
                self.run_id, expected_seq=event.seq - 1, token=lease.token, event=event, **extra
            )
        except KeyError:
            await self.release(quiet=True)
            raise RunNotFound(self.run_id, lost=True) from None
        if isinstance(outcome, Committed):
            self._record = _advance(self._record, event)
            self._ledger.committed(event, patch_sizes)
            self.memory = memory
            if event.status != "running":
                self._keeper.dropped()  # the commit gave the lease back
            for hook in self.hooks:  # last: this copy is up to date if one fails
                await hook.after_commit(self._record, event, again=False)
            return event
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
            raise await self._lost(stored)
        raise RunTakenOver(
            f"run {self.run_id!r}: commit of {event.trigger!r} at seq {event.seq} refused, {why};"
            " another process drives the run now"
        )


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
        trace=record.trace,
        usage=added(record.usage, event.usage),
    )
