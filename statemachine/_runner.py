"""`Run`: one execution of a machine, driven one durable transition at a time.

The protocol, as `Run._run_and_commit` shows it: pick the transition out of the current
state → run its step under its idempotency key (`_keys.step_key`: the same for every try of
the transition) → ONE `Store.commit` that checks the key, the seq and the fencing token and
writes the new state, the memory patch and the event → handle the outcome (`_commit`). What
happens beside it (the live channel, tracing, budget charges) is plugged in as named hooks
(`_hooks`: before_step, after_try_failed, before_commit, after_commit), not written into the
loop. The lease is taken once and renewed in the background (`_lease`), so the hot path is
that one commit; the commit that leaves the run not running gives the lease back itself.

The rooms around it: what the run holds and how it holds the lease (`_run_core`), the commit
and its outcomes (`_commit`), the runner's own transitions (`_commands`: retry, cancel,
timeouts), what a run reads (`_reads`), crash accounting (`_crashes`), the memory between
commits (`_ledger`), results made ready to commit (`_settle`), events (`_events`).

Each try of a step works on its own copy of the memory: a try that timed out or was abandoned
(a sync tool's thread runs on after its timeout) can change nothing a later commit writes.
Process deaths during a step count against the step's `crash_retries`, apart from its
`retries`, which are for errors the step raises.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TypeVar

from pydantic import BaseModel, JsonValue

from storage import Event, Lease, RunStatus
from storage.base import json_bytes
from storage.errors import Unstorable

from . import _clock
from ._commands import RunCommands
from ._crashes import deaths_in_step
from ._events import error_event, halt_event, step_event
from ._reads import RunReads
from ._settle import Settled, StepFailed, settle
from ._step import StepContext, StepResult
from ._table import Transition
from ._tracing import transition_span
from .errors import InvalidMemory, InvalidPayload, RunError, StepHalted, UnstorableResult

__all__ = ["Run", "check_payload_storable"]

M = TypeVar("M", bound=BaseModel)

_log = logging.getLogger("statemachine.runner")


class Run(RunCommands[M], RunReads[M]):
    """A run of a `Machine`. Get one from `Machine.start` or `Machine.resume`.

    `memory` is the memory as last committed. Drive the run with `step()` (one transition)
    or `until_done()`; both take the run's lease on first use, and `until_done()` gives it
    back. Use `async with run:` to make sure a lease taken by `step()` is released.
    """

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
            await self.release(quiet=True)  # the live items went with the commits
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
        if self._in_doubt is not None:  # this call retries the commit an error cut short
            settled = await self._settle_in_doubt()
            if settled is not None:
                return settled
        lease = self._held() or await self._hold()
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
        started = _clock.now()
        try:
            if t.max_visits is not None:
                await self._check_visits(t, t.max_visits)
            crashed = self._record.crashes > 0 and not t.waits  # a wait runs nothing to die in
            died = await deaths_in_step(self.store, self._record) if crashed else 0
            done, attempt = await self._run_step(t, seq, key, died, payload)
        except StepFailed as failed:
            if t.waits and isinstance(failed.error, ValueError | UnstorableResult):
                # The event's payload would break the run: refuse it, the run waits on.
                await self.release(quiet=True)
                raise failed.error from None
            return await self._fail(t, key, failed, started)
        except StepHalted as halted:
            return await self._halt(t, key, halted, started)
        status = self.machine.status_in(done.dest)
        event = step_event(
            self._record, t, key, done, status, attempt=attempt, started=started,
            ended=_clock.now(), worker=self.owner,
        )  # fmt: skip
        return await self._commit(lease, event, done.memory, done.patch_sizes)

    async def _check_visits(self, t: Transition, limit: int) -> None:
        """`StepFailed`, for good, when `t` reached its `max_visits` (`limit`)."""
        if await self._ledger.visits(t.trigger) >= limit:
            raise StepFailed(
                RunError(f"transition {t.trigger!r} reached its limit of {limit} visits"),
                1,
                final=True,  # a detour could lead back here: the loop ends for good
            )

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
            for hook in self.hooks.before_step:
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
                for hook in self.hooks.after_try_failed:
                    hook.after_try_failed(seq, attempt, error, not gives_up)
                if gives_up:
                    raise StepFailed(error, attempt, spent) from exc
                await asyncio.sleep(policy.delay(tries, exc))

    def _settle(self, t: Transition, result: StepResult[M]) -> Settled[M]:
        return settle(self.machine, self.run_id, self._ledger, self.memory, t, result)

    async def _fail(self, t: Transition, key: str, failed: StepFailed, started: float) -> Event:
        lease = await self._hold()
        # The transition's own failure state may be a detour the run goes on from (status
        # of that state); the machine's failure state, or none, parks the run as failed.
        detour = None if failed.final else t.on_error
        dest = detour or self.machine.table.on_error or self.state
        status: RunStatus = "failed" if detour is None else self.machine.status_in(dest)
        event = error_event(
            self._record, t, key, failed, dest, status, started=started, ended=_clock.now(),
            worker=self.owner,
        )  # fmt: skip
        return await self._commit(lease, event, self.memory)

    async def _halt(self, t: Transition, key: str, halted: StepHalted, started: float) -> Event:
        """Commit a step's `StepHalted`: to its `dest`, or parked `waiting` where it is."""
        lease = await self._hold()
        status: RunStatus = (
            "waiting" if halted.dest is None else self.machine.status_in(halted.dest)
        )
        event = halt_event(
            self._record, t, key, halted, status, started=started, ended=_clock.now(),
            worker=self.owner,
        )  # fmt: skip
        return await self._commit(lease, event, self.memory)


def check_payload_storable(event: str, payload: object) -> None:
    """`InvalidPayload` for a payload no store would read back equal (checked before its
    schema: pydantic's errors on a value nested 200 deep are pages long)."""
    try:
        json_bytes(payload, f"the payload of event {event!r}")
    except Unstorable as exc:
        raise InvalidPayload(event, f"{exc.problem}; nothing was written") from None
