"""The runner's own transitions (not from the table), each one commit: `retry` a failed or
halted run, `cancel` it, fire a waiting run's due timeout (the base of `Run`)."""

from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel, JsonValue

from storage import Event, RunStatus

from . import _clock
from ._commit import Committer
from ._events import control_event, timeout_event
from .errors import NotDue, RunError

__all__ = ["RunCommands"]

M = TypeVar("M", bound=BaseModel)


class RunCommands(Committer[M]):
    """What people (or a poller) tell a run to do."""

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
        now = _clock.now()
        if self.status != "waiting" or timed is None or deadline is None or deadline > now:
            await self.release(quiet=True)
            when = "" if deadline is None else f" (deadline in {deadline - now:.3g} s)"
            raise NotDue(
                f"run {self.run_id!r} has no timeout due: it is {self.status} in state"
                f" {self.state!r}{when}"
            )
        assert timed.on_timeout is not None  # checked with the table
        key = await self.idempotency_key(timed.trigger)
        status = self.machine.status_in(timed.on_timeout)
        event = timeout_event(
            self._record, timed, key, status, deadline, at=_clock.now(), worker=self.owner
        )
        return await self._commit(lease, event, self.memory)

    async def _control(
        self, trigger: str, dest: str, status: RunStatus, output: JsonValue = None
    ) -> Event:
        """Commit a transition of the runner's own (not from the table)."""
        lease = await self._hold()
        event = control_event(
            self._record, trigger, dest, status, output, at=_clock.now(), worker=self.owner
        )
        return await self._commit(lease, event, self.memory)
