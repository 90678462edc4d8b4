"""Errors raised when declaring and running machines.

ValueError
 ├── DefinitionError     the state table is wrong; names the state or transition
 ├── InvalidMemory       memory fails its schema, or would not read back equal (NaN,
 │                       nesting deeper than 100); names the fields; nothing written
 └── MemoryTooLarge      memory over the machine's `max_memory` bytes; nothing written
RuntimeError
 └── RunError            a run cannot do what was asked
      ├── RunNotFound    no run with that id
      ├── RunLocked      another process holds the run's lease
      ├── RunTakenOver   the lease was lost mid-run; this process must stop driving it
      ├── CommitsLost    the store lost commits it had acknowledged; resume the run
      ├── NoTransition   no transition out of the current state applies
      ├── NotDue         the run has no timeout that is due now
      ├── UnstorableResult  a step returned what cannot be stored as JSON (a failed try)
      └── VersionMismatch  the stored run was made by another version of the machine
 └── RendererMissing     Graphviz's `dot` program, needed for SVG and PNG, is not installed
Exception
 └── StepHalted          a step stops the run before its work, without a failure (a budget)
"""

from __future__ import annotations

from typing import Any

from pydantic import JsonValue, ValidationError

__all__ = [
    "CommitsLost",
    "DefinitionError",
    "InvalidMemory",
    "InvalidPayload",
    "MemoryTooLarge",
    "NoTransition",
    "NotDue",
    "RendererMissing",
    "RunError",
    "RunLocked",
    "RunNotFound",
    "RunTakenOver",
    "StepHalted",
    "UnstorableResult",
    "VersionMismatch",
]


def _problems(error: ValidationError, whole: str) -> str:
    """`field.path: message; ...` for each problem pydantic found (`whole` names the root)."""
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or whole}: {e['msg']}" for e in error.errors()
    )


class DefinitionError(ValueError):
    """The state table cannot work. Raised at declaration, before anything runs."""


class InvalidMemory(ValueError):
    """Memory that fails its schema. Raised before any write."""

    def __init__(self, where: str, error: ValidationError | str) -> None:
        if isinstance(error, str):  # a value no store would read back equal
            super().__init__(f"{where}: {error}")
            self.errors: list[Any] = []
            return
        problems = _problems(error, "memory")
        super().__init__(f"{where}: memory fails the {error.title} schema: {problems}")
        self.errors = list(error.errors())


class InvalidPayload(ValueError):
    """An event payload that fails its schema. Raised before any write."""

    def __init__(self, event: str, error: ValidationError | str) -> None:
        if isinstance(error, str):
            super().__init__(f"payload of event {event!r}: {error}")
            self.errors: list[Any] = []
            return
        problems = _problems(error, "payload")
        super().__init__(f"payload of event {event!r} fails its schema: {problems}")
        self.errors = list(error.errors())


class RunError(RuntimeError):
    """A run cannot do what was asked."""


class RunNotFound(RunError, LookupError):
    def __init__(self, run_id: str, *, lost: bool = False) -> None:
        if lost:  # it was there when this process read it
            super().__init__(
                f"run {run_id!r} is gone from the store while it ran: the store lost it"
                " (a Redis restarted without persistence, FLUSHALL, an expiry); restore it from"
                " an export (`agentfsm import`) or start it again"
            )
        else:
            super().__init__(f"no run with id {run_id!r} in this store")
        self.run_id = run_id


class RunLocked(RunError):
    def __init__(self, run_id: str, owner: str, expires_in: float) -> None:
        super().__init__(
            f"run {run_id!r} is held by {owner!r}, a process that is alive or on another"
            f" machine (lease expires in {expires_in:.1f}s unless renewed); wait for it with"
            " lease_wait=SECONDS, or stop that process"
        )
        self.run_id = run_id
        self.owner = owner
        self.expires_in = expires_in


class RunTakenOver(RunError):
    """This process lost the run's lease; another process drives the run now."""


class CommitsLost(RunError):
    """The store no longer has commits it acknowledged to this process (a Redis restarted
    without its last writes: `appendfsync everysec` or no AOF, a failover to a replica that
    lagged, a restored backup). The run is left as the store has it, resumable: resuming it
    runs the lost steps again, under their same idempotency keys."""

    def __init__(self, run_id: str, stored_seq: int, acknowledged_seq: int, state: str) -> None:
        lost = (
            f"commit {acknowledged_seq}" if stored_seq + 1 == acknowledged_seq
            else f"commits {stored_seq + 1}..{acknowledged_seq}"
        )  # fmt: skip
        super().__init__(
            f"run {run_id!r}: the store lost {lost}, which it had acknowledged (a restart"
            " without its last writes, a failover, a restored backup); the run is back at seq"
            f" {stored_seq} in state {state!r}. Resume it (`agentfsm resume {run_id}`, or"
            " `Machine.resume`): the lost steps run again under their same idempotency keys"
        )
        self.run_id = run_id
        self.lost = range(stored_seq + 1, acknowledged_seq + 1)


class UnstorableResult(RunError):
    """A step returned something the store cannot keep as JSON (a try that fails; the
    step's retries apply)."""


class NoTransition(RunError):
    """No transition out of the current state applies to the memory."""


class VersionMismatch(RunError):
    """A stored run was made by a version of the machine this code cannot load."""


class RendererMissing(RuntimeError):
    """Graphviz's `dot` program, needed to draw SVG and PNG, is not installed."""


class NotDue(RunError):
    """The run is not waiting on a timeout that is due: nothing to fire."""


class MemoryTooLarge(ValueError):
    """The memory would take more bytes as JSON than the machine's `max_memory`."""


class StepHalted(Exception):
    """Raised by a step to stop the run without a failure, before it does its work (a budget
    that would be overspent, say). The run goes to `dest`, a state of the table, or with
    `dest` None stays in its state with status `waiting` until `Run.retry()` sends it on.
    Committed as an event of kind "halt" whose output is `output` (the figures), carrying
    what earlier tries of the transition paid. Never retried by the step's policy."""

    def __init__(self, message: str, *, dest: str | None = None, output: JsonValue = None):
        super().__init__(message)
        self.dest = dest
        self.output = output
        self.spent: dict[str, int] | None = None
        """Set by the runner: what this transition's earlier tries paid."""
