"""Idempotency keys of steps and of the runner's own events, on `storage.base.run_key` (the
one function every key of a run, its creation's included, is built with).

A step's key names the *logical* transition, and is unique in the world:

    {run_id}:{nonce}:{entered}:{trigger}         (+ ":{tool_call_id}" for a tool call)

- `nonce` is random, made when the run is created and stored with it (exports too), so runs
  of one id in two stores, two tenants, or an id used again after the first run was deleted
  never share a key. Runs stored before nonces existed have none: `{run_id}:{entered}:...`.
- `entered` is the seq of the commit that brought the run into the state the transition
  leaves. Every try, every crash-retry and every `Run.retry()` of one transition shares it
  (an error that parks the run, and the retry that puts it back, are not new visits); a new
  visit of the state (a loop) makes a new key.

The runner's own events (a failure, a retry, a cancel, a timeout, a migration) are keyed by
the seq they commit at, or by the step key they belong to, so each is unique too.
"""

from __future__ import annotations

from storage import Event, RunRecord
from storage.base import run_key

__all__ = ["control_key", "enters", "step_key"]


def step_key(run: RunRecord, entered: int, trigger: str) -> str:
    """The key every try of `trigger` out of the state `run` entered at seq `entered` runs
    under (`StepContext.idempotency_key`)."""
    return run_key(run, entered, trigger)


def control_key(run: RunRecord, what: str) -> str:
    """The key of a runner's own event committed on top of `run` as it is now."""
    return run_key(run, run.seq, what)


def enters(event: Event) -> bool:
    """Whether `event` brought the run into `event.dest` (a new visit of that state).

    Not a visit: an error that parks the run as failed, a halt that parks it where it is,
    and the runner's control events (a
    retry puts the run back where it failed; a migration or cancel moves nothing onward).
    """
    if event.kind == "control" or (event.kind == "halt" and event.dest == event.source):
        return False
    return not (event.kind == "error" and event.status == "failed")
