"""What a transition runs: the `Step` protocol and the values passed to and from a step."""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from pydantic import BaseModel, JsonValue

from storage import Event, Store

from ._live import NO_LIVE, StepLive

__all__ = ["RetryPolicy", "Step", "StepContext", "StepResult"]

M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True, kw_only=True, slots=True)
class RetryPolicy:
    """How often a step is tried and how long each try may take.

    `attempts` counts the tries that end in an error the step raises; tries cut short by
    the process dying count against `crash_retries` instead, so a step that kills its process
    each time still ends in the failure state, and a single crash does not use up `attempts`.
    """

    attempts: int = 1
    backoff: float = 0.5
    """Seconds before the second try; doubles each time, up to `max_backoff`, with jitter."""
    max_backoff: float = 30.0
    timeout: float | None = None
    """Seconds one try may take; a try that runs over is cancelled and counts as failed."""
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    retry_if: Callable[[BaseException], bool] | None = None
    """Also retry errors outside `retry_on` for which this returns True."""
    crash_retries: int | None = None
    """How often the step may be cut short by its process dying before the run fails
    (counted durably, apart from `attempts`); None: the machine's `crash_retries`."""

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"attempts must be at least 1, not {self.attempts}")
        if self.crash_retries is not None and self.crash_retries < 0:
            raise ValueError(f"crash_retries must be 0 or more, not {self.crash_retries}")
        if self.timeout is not None and self.timeout <= 0:
            raise ValueError(f"timeout must be positive, not {self.timeout}")

    def retries(self, error: BaseException) -> bool:
        """Whether a try that raised `error` may be tried again (attempts allowing)."""
        return isinstance(error, self.retry_on) or (
            self.retry_if is not None and self.retry_if(error)
        )

    def delay(self, attempt: int, error: BaseException | None = None) -> float:
        """Seconds to wait after failed try number `attempt` (1-based), with full jitter;
        at least what the error's `retry_after` asks (a provider's Retry-After), capped."""
        wait = random.uniform(0, min(self.max_backoff, self.backoff * 2 ** (attempt - 1)))
        asked = getattr(error, "retry_after", None)
        if isinstance(asked, int | float) and asked > wait:
            wait = min(float(asked), self.max_backoff)
        return wait


@dataclass(frozen=True, kw_only=True, slots=True)
class StepContext:
    """What a step knows of the transition it runs in.

    `idempotency_key` is the same on every try of this transition, in any process, after
    a crash and after `Run.retry()`, and no other run anywhere has it, so an external system
    can drop a duplicate of a side effect (format: `statemachine._keys`).
    """

    run_id: str
    seq: int
    """The run's seq before this transition; the commit will make it `seq + 1`."""
    trigger: str
    attempt: int
    idempotency_key: str
    conversation: Callable[[], Awaitable[list[JsonValue]]] = field(repr=False)
    """Loads the model messages the run's earlier steps committed, oldest first."""
    history: Callable[[], Awaitable[list[Event]]] = field(repr=False)
    """Loads the run's committed events, oldest first."""
    payload: JsonValue = None
    """For a `wait` step: the event's payload, as sent to `Run.send`."""
    usage: Mapping[str, int] = field(default_factory=dict)
    """The run's usage ledger as last committed (`RunRecord.usage`): what it paid so far."""
    store: Store | None = field(default=None, repr=False)
    """The store the run lives in (for steps that keep ledgers beside it: budgets)."""
    spent: dict[str, int] = field(default_factory=dict)
    """What this transition's tries have cost so far in this process (model requests,
    tokens): shared by all its tries. A step adds what it paid for, also when it raises,
    so the event records it even when the step gives up."""
    live: StepLive = field(default=NO_LIVE, repr=False)
    """The run's live channel, for progress a watcher sees before the commit (model
    tokens): items are tagged with this try's seq and attempt (see `Run.watch`)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class StepResult(Generic[M]):
    """What a step produced: the new memory and what to record on the event."""

    memory: M
    output: JsonValue = None
    route: str | None = None
    """For a transition with `routes`: the name of the route to take."""
    usage: dict[str, int] | None = None
    messages: list[JsonValue] = field(default_factory=list)
    subkey: str | None = None
    """Appended to the transition's idempotency key on the event (a tool call's id)."""


class Step(Protocol[M]):
    """A unit of work run by a transition. Steps are plain values in the state table."""

    @property
    def kind(self) -> str:
        """ "tool", "llm", ... (shown on graphs and recorded on events)."""
        ...

    @property
    def label(self) -> str:
        """A short name for graphs and messages (a function name, a model name)."""
        ...

    @property
    def policy(self) -> RetryPolicy: ...

    async def run(self, memory: M, ctx: StepContext) -> StepResult[M]:
        """Do the work. Raise to fail this try; the runner retries as the policy says."""
        ...
