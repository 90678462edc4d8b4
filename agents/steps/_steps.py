"""Step kinds that go in a state table: `tool()` (a Python function); `llm()` lives in `_llm.py`."""

from __future__ import annotations

import asyncio
import inspect
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import BaseModel, JsonValue, TypeAdapter, ValidationError

from statemachine import DefinitionError, StepContext, transition
from statemachine.engine import Guard, RetryPolicy, StepResult, Transition
from statemachine.errors import InvalidPayload

__all__ = ["ToolStep", "WaitStep", "apply_output", "tool", "wait"]

M = TypeVar("M", bound=BaseModel)

Reducer = Callable[[Any, Any], Mapping[str, Any] | BaseModel]
"""`update=` reducer: (memory, step output) -> the fields to change (or a whole new memory)."""


def apply_output(memory: M, value: Any, into: str | None, update: Reducer | None) -> M:
    """The memory after a step produced `value`: put into a field, reduced, or as is.

    The runner checks the result against the schema before committing it.
    """
    if into is not None:
        return memory.model_copy(update={into: value})
    if update is not None:
        changes = update(memory, value)
        if isinstance(changes, BaseModel):
            return changes  # type: ignore[return-value]  # the runner checks its type
        if not isinstance(changes, Mapping):
            raise TypeError(
                f"update= reducer returned {type(changes).__name__}, not a mapping of fields"
            )
        unknown = set(changes) - set(type(memory).model_fields)
        if unknown:
            raise KeyError(f"update= reducer set unknown memory fields {sorted(unknown)}")
        return memory.model_copy(update=dict(changes))
    if isinstance(value, type(memory)):
        return value
    return memory


INLINE_BELOW = 0.001
"""Seconds: a sync tool (default placement) whose calls take less than this runs inline."""
SHORT_CALLS_FIRST = 3
"""Calls in a row under INLINE_BELOW, in the worker thread, before a sync tool runs inline."""


@dataclass(kw_only=True, slots=True)
class Placement:
    """Where a sync tool with the default placement runs, learnt from its calls in this process.

    In a worker thread at first, so that a slow function cannot stall the event loop (and the
    lease renewals on it). Once SHORT_CALLS_FIRST calls in a row each took under INLINE_BELOW,
    inline on the loop: a hop to a thread and back costs ~40-170 µs on a busy 2-core machine,
    far more than such a call, and a call that short cannot delay a renewal that comes every
    ttl/3 seconds. A call that runs inline and takes INLINE_BELOW or longer sends the tool back
    to the thread for good, so the loop stalls for a long call at most once per tool.
    """

    short_calls: int = 0
    pinned: bool = False
    """Sent back to the thread for good."""

    @property
    def inline(self) -> bool:
        return not self.pinned and self.short_calls >= SHORT_CALLS_FIRST

    def took(self, seconds: float, *, inline: bool) -> None:
        if seconds < INLINE_BELOW:
            self.short_calls += 1
        elif inline:
            self.pinned = True
        else:
            self.short_calls = 0


_PLACEMENTS: weakref.WeakKeyDictionary[Callable[..., Any], Placement] = weakref.WeakKeyDictionary()
"""One `Placement` per function, shared by every step that runs it (a chain of steps may
call one function once each)."""


def placement_of(fn: Callable[..., Any]) -> Placement:
    """The `Placement` of `fn`, shared by all its steps in this process."""
    key = getattr(fn, "__func__", fn)  # a bound method: its function
    try:
        return _PLACEMENTS.setdefault(key, Placement())
    except TypeError:  # cannot be weakly referenced (a builtin): a placement of its own
        return Placement()


@dataclass(frozen=True, kw_only=True, slots=True)
class ToolStep:
    """A Python function as a step: `fn(memory)` or `fn(memory, ctx)`, sync or async.

    Sync functions run where `in_thread` says: True in a worker thread, False inline on the
    event loop; None (the default) in a worker thread until they have shown that they are
    short, then inline (see `Placement`). With a `timeout`, the default is the thread, where
    an overrunning call does not hold up the loop.
    """

    fn: Callable[..., Any]
    into: str | None
    update: Reducer | None
    policy: RetryPolicy
    in_thread: bool | None
    takes_ctx: bool
    is_async: bool
    routes: bool = False
    """The function returns the name of the route to take."""
    kind: str = "tool"
    placement: Placement = field(default_factory=Placement, compare=False, repr=False)

    @property
    def label(self) -> str:
        return getattr(self.fn, "__name__", "tool")

    @property
    def writes(self) -> tuple[str, ...]:
        return (self.into,) if self.into else ()

    async def run(self, memory: Any, ctx: StepContext) -> StepResult[Any]:
        args = (memory, ctx) if self.takes_ctx else (memory,)
        if self.is_async:
            value = await self.fn(*args)
        elif self.in_thread is None and self.policy.timeout is None:
            value = await self._run_placed(args)
        elif self.in_thread is False:
            value = self.fn(*args)
        else:
            value = await asyncio.to_thread(self.fn, *args)
        new = apply_output(memory, value, self.into, self.update)
        route = value if self.routes and isinstance(value, str) else None
        # With into=, the value is already in the event's memory patch: record it once.
        output = None if new is value or self.into is not None else value
        return StepResult(memory=new, output=output, route=route)

    async def _run_placed(self, args: tuple[Any, ...]) -> Any:
        """Run the sync function where its `Placement` says, and time the call."""
        placement = self.placement
        clock = time.perf_counter
        if placement.inline:
            start = clock()
            try:
                return self.fn(*args)
            finally:
                placement.took(clock() - start, inline=True)
        took: list[float] = []

        def timed() -> Any:
            start = clock()
            try:
                return self.fn(*args)
            finally:
                took.append(clock() - start)

        try:
            return await asyncio.to_thread(timed)
        finally:
            if took:  # not when cancelled before the thread ran it
                placement.took(took[0], inline=False)


def _arity(fn: Callable[..., Any], what: str) -> bool:
    """True when `fn` takes (memory, ctx), False for (memory)."""
    try:
        params = [
            p
            for p in inspect.signature(fn).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
        ]
    except (TypeError, ValueError):
        return False
    if len(params) not in (1, 2):
        raise DefinitionError(
            f"{what}: the function must take (memory) or (memory, ctx), not {len(params)} arguments"
        )
    return len(params) == 2


def tool(
    trigger: str,
    source: str | list[str] | tuple[str, ...],
    dest: str | None,
    fn: Callable[..., Any],
    *,
    into: str | None = None,
    update: Reducer | None = None,
    guard: Guard | None = None,
    routes: Mapping[str, str] | None = None,
    retries: int = 0,
    timeout: float | None = None,
    backoff: float = 0.5,
    retry_on: tuple[type[BaseException], ...] = (Exception,),
    in_thread: bool | None = None,
    max_visits: int | None = None,
    on_error: str | None = None,
    crash_retries: int | None = None,
) -> Transition:
    """A transition that runs the Python function `fn` on the memory.

    Its return value goes `into=` a memory field, or through an `update=` reducer, or, when it
    is a memory object itself, becomes the new memory. With `routes`, it must return a route
    name. `retries` tries again after an error (with jittered exponential `backoff`); a
    `timeout` (seconds) bounds each try. `crash_retries` (default: the agent's, 3) is how
    often its process may die during the step before the run fails. `max_visits` caps how
    often the transition fires in one run (a loop's way out): one more sends the run to its
    failure state.
    `on_error` names the state to go to when this step gives up (default: the agent's).
    A sync `fn` runs in a worker thread with `in_thread=True`, inline on the event loop with
    `in_thread=False`; by default in a thread until its calls have shown they are short
    (under a millisecond), then inline, and always in a thread when it has a `timeout`.
    Give `in_thread=True` to a function that is quick but may block on I/O now and then.
    """
    what = f"tool step {trigger!r}"
    if not callable(fn):
        raise DefinitionError(f"{what}: {fn!r} is not callable")
    if into is not None and update is not None:
        raise DefinitionError(f"{what}: give into= or update=, not both")
    if retries < 0:
        raise DefinitionError(f"{what}: retries must be 0 or more, not {retries}")
    step = ToolStep(
        fn=fn,
        into=into,
        update=update,
        policy=RetryPolicy(
            attempts=retries + 1,
            backoff=backoff,
            timeout=timeout,
            retry_on=retry_on,
            crash_retries=crash_retries,
        ),
        in_thread=in_thread,
        placement=placement_of(fn),
        takes_ctx=_arity(fn, what),
        is_async=inspect.iscoroutinefunction(fn),
        routes=bool(routes),
    )
    return transition(
        trigger,
        source,
        dest,
        step,
        guard=guard,
        routes=routes,
        max_visits=max_visits,
        on_error=on_error,
    )


@dataclass(frozen=True, kw_only=True, slots=True)
class WaitStep:
    """Parks the run until `Run.send` delivers the event, then puts its payload in memory."""

    event: str
    payload: Any
    into: str | None
    update: Reducer | None
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    kind: str = "wait"

    @property
    def label(self) -> str:
        return self.event

    @property
    def writes(self) -> tuple[str, ...]:
        return (self.into,) if self.into else ()

    def check_payload(self, payload: Any) -> JsonValue:
        """The payload as JSON, checked against the declared type; `InvalidPayload` if not."""
        adapter: TypeAdapter[Any] = TypeAdapter(self.payload)
        try:
            value = adapter.validate_python(payload)
        except ValidationError as exc:
            raise InvalidPayload(self.event, exc) from None
        checked: JsonValue = adapter.dump_python(value, mode="json")
        return checked

    async def run(self, memory: Any, ctx: StepContext) -> StepResult[Any]:
        value = TypeAdapter(self.payload).validate_python(ctx.payload)
        new = apply_output(memory, value, self.into, self.update)
        return StepResult(memory=new, output=None if self.into is not None else ctx.payload)


def wait(
    event: str,
    source: str | list[str] | tuple[str, ...],
    dest: str | None,
    *,
    payload: Any = None,
    into: str | None = None,
    update: Reducer | None = None,
    guard: Guard | None = None,
    timeout: float | None = None,
    on_timeout: str | None = None,
) -> Transition:
    """A transition fired by an outside event: `await run.send(event, payload)` or
    `agentfsm send RUN_ID EVENT --data JSON`. A run in `source` is parked (status
    `waiting`): no process and no lease are held while it waits.

    `payload` is the type the payload must have (a pydantic model, `str`, ...; None means
    no payload); it goes `into=` a memory field or through an `update=` reducer.
    With `timeout` (seconds), a run that waited that long without the event goes to the
    `on_timeout` state instead. The deadline is stored with the run; any process that
    polls for due timeouts fires it (`agent.fire_due(store)`, `agentfsm timeouts`).
    """
    if into is not None and update is not None:
        raise DefinitionError(f"wait {event!r}: give into= or update=, not both")
    step = WaitStep(event=event, payload=payload, into=into, update=update)
    return transition(
        event, source, dest, step, guard=guard, timeout=timeout, on_timeout=on_timeout
    )
