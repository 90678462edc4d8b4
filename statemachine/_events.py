"""The events a `Run` commits, built in one place: a table transition's, a failure's, a
halt's, and the runner's own (control, timeout). Each is the next seq on top of the run as
it is; keys come from `_keys`."""

from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel, JsonValue

from storage import Event, RunRecord, RunStatus

from ._keys import control_key
from ._settle import Settled, StepFailed
from ._table import Transition
from .errors import StepHalted

__all__ = ["control_event", "error_event", "halt_event", "step_event", "timeout_event"]

M = TypeVar("M", bound=BaseModel)


def step_event(
    run: RunRecord, t: Transition, key: str, done: Settled[M], status: RunStatus, *,
    attempt: int, started: float, ended: float, worker: str,
) -> Event:  # fmt: skip
    """The commit of `t`'s step that worked (`done`), under step key `key`."""
    result = done.result
    return Event(
        seq=run.seq + 1,
        trigger=t.trigger,
        kind=t.step.kind if t.step else "move",
        source=run.state,
        dest=done.dest,
        status=status,
        key=key if result.subkey is None else f"{key}:{result.subkey}",
        patch=done.patch,
        output=done.output,
        attempt=attempt,
        started_at=started,
        ended_at=ended,
        worker=worker,
        usage=result.usage,
        messages=result.messages,
        step=t.step.label if t.step else "",
    )


def error_event(
    run: RunRecord, t: Transition, key: str, failed: StepFailed, dest: str, status: RunStatus,
    *, started: float, ended: float, worker: str,
) -> Event:  # fmt: skip
    """The commit of `t`'s step giving up (`failed`): to `dest`, keyed on the step's key."""
    error = failed.error
    seq = run.seq + 1
    return Event(
        seq=seq,
        trigger=t.trigger,
        kind="error",
        source=run.state,
        dest=dest,
        status=status,
        key=f"{key}:failed:{seq}",
        attempt=failed.attempt,
        started_at=started,
        ended_at=ended,
        worker=worker,
        step=t.step.label if t.step else "",
        usage=failed.spent,
        error={
            "type": type(error).__name__,
            "message": str(error),
            "attempt": failed.attempt,
            "step": t.step.kind if t.step else "move",
        },
    )


def halt_event(
    run: RunRecord, t: Transition, key: str, halted: StepHalted, status: RunStatus, *,
    started: float, ended: float, worker: str,
) -> Event:  # fmt: skip
    """The commit of `t`'s step raising `StepHalted`: to its `dest`, or parked where it is."""
    seq = run.seq + 1
    return Event(
        seq=seq,
        trigger=t.trigger,
        kind="halt",
        source=run.state,
        dest=halted.dest or run.state,
        status=status,
        key=f"{key}:halted:{seq}",
        output=halted.output,
        started_at=started,
        ended_at=ended,
        worker=worker,
        step=t.step.label if t.step else "",
        usage=halted.spent,
    )


def control_event(
    run: RunRecord, trigger: str, dest: str, status: RunStatus, output: JsonValue, *,
    at: float, worker: str,
) -> Event:  # fmt: skip
    """A transition of the runner's own (retry, cancel, migrate), not from the table."""
    return Event(
        seq=run.seq + 1,
        trigger=trigger,
        kind="control",
        source=run.state,
        dest=dest,
        status=status,
        key=control_key(run, trigger),
        output=output,
        started_at=at,
        ended_at=at,
        worker=worker,
    )


def timeout_event(
    run: RunRecord, wait: Transition, key: str, status: RunStatus, deadline: float, *,
    at: float, worker: str,
) -> Event:  # fmt: skip
    """A waiting run sent to its timeout state: `wait` is the timed wait, `key` its step key."""
    assert wait.on_timeout is not None  # checked with the table
    return Event(
        seq=run.seq + 1,
        trigger=wait.trigger,
        kind="timeout",
        source=run.state,
        dest=wait.on_timeout,
        status=status,
        key=f"{key}:timeout",
        output={"deadline": deadline, "timeout": wait.timeout},
        started_at=at,
        ended_at=at,
        worker=worker,
    )
