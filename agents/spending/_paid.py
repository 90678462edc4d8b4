"""One paid model request: the one path every model request takes, whether an `llm()` step
(its output retries included), an `llm()` tool loop or a `DurableAgent` (plain or streamed)
makes it.

    admit (run and scope budgets: `BudgetGate.admit`, `StepHalted` when over; a scope
           holds the request in flight until its charge, released if it gets no answer)
    → a slot of every rate limit (`rate_limited`)
    → send (plain, or a stream read to its end)
    → usage with cache tokens and cost (`usage_of`: genai-prices, as pydantic-ai prices)
    → charged to the transition (`charge`: `ctx.spent`), also when the step fails later
      (a request that got no answer reported no usage, and is charged nothing)
    → recorded: the transition's event carries `ctx.spent`, committed with it.

`llm()` steps send through `PaidModel`, a wrapper around the step's model, so that
pydantic-ai's own loop (output retries, tool-call rounds) goes through here for each request;
`DurableAgent`'s journal calls `paid_request` from its model-request transition.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

from pydantic_ai import RunContext
from pydantic_ai.messages import ModelMessage, ModelResponse
from pydantic_ai.models import Model, ModelRequestParameters, StreamedResponse
from pydantic_ai.models.wrapper import WrapperModel
from pydantic_ai.settings import ModelSettings
from pydantic_ai.usage import RunUsage

from statemachine import StepContext
from statemachine.engine import RetryPolicy
from storage import StorageError

from ..steps._tool_engine import charge
from ._budget import BudgetGate, Held
from ._ratelimit import RateLimit, rate_limited

__all__ = ["PaidModel", "Spending", "model_label", "paid_request", "usage_of"]

_log = logging.getLogger("agentfsm.spending")


@dataclass(frozen=True, kw_only=True, slots=True)
class Spending:
    """An agent's budgets and rate limits, as its model requests are bound to them."""

    gate: BudgetGate | None = None
    rate_limits: tuple[RateLimit, ...] = ()
    timeout: float | None = None
    """With rate limits: the step's timeout, on the requests' sending time alone (waiting
    for a slot counts only where a limit says so; see `policy`)."""

    def policy(self, policy: RetryPolicy) -> tuple[Spending, RetryPolicy]:
        """This spending and the step's policy, for a step with `policy`: with rate limits
        the requests are timed here (without the waits for slots), not by the runner."""
        if not self.rate_limits:
            return self, policy
        return replace(self, timeout=policy.timeout), replace(policy, timeout=None)


def model_label(model: Model) -> str:
    """How budgets, rate limits and events name `model`: "openai:gpt-4o-mini"."""
    name = model.model_name
    return name if name.startswith("offline:") else f"{model.system}:{name}"


def usage_of(response: ModelResponse) -> RunUsage:
    """What one answered request used: one request, its tokens (cache ones too) and its cost
    (what the provider reported, else genai-prices' price; None when neither knows)."""
    usage = response.usage
    cost = usage.cost
    if cost is None and response.model_name:
        with contextlib.suppress(LookupError, ValueError):  # a model genai-prices does not know
            cost = response.cost().total_price
    return RunUsage(
        requests=1,
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cache_read_tokens=usage.cache_read_tokens,
        cache_write_tokens=usage.cache_write_tokens,
        cost=cost,
    )


@dataclass(eq=False)
class _Clock:
    """A try's sending time so far, against the step's timeout (None: no timeout)."""

    timeout: float | None
    used: float = 0.0

    def left(self, trigger: str) -> float | None:
        if self.timeout is None:
            return None
        left = self.timeout - self.used
        if left <= 0:
            raise TimeoutError(f"step {trigger!r} timed out after {self.timeout}s")
        return left


@contextlib.asynccontextmanager
async def _paying(
    spending: Spending | None, memory: Any, ctx: StepContext, model: str, clock: _Clock
) -> AsyncIterator[Callable[[ModelResponse], None]]:
    """Admit one request, hold its rate-limit slots, time it; yields the function that
    records its answer. What it used is charged to the transition when it ends, however."""
    gate = spending.gate if spending is not None else None
    held = await gate.admit(memory, ctx) if gate is not None else None
    answered: list[ModelResponse] = []
    limits = spending.rate_limits if spending is not None else ()
    timeout = spending.timeout if spending is not None else None
    try:
        async with rate_limited(ctx, limits, model, timeout) as report:
            began = time.monotonic()
            try:
                async with asyncio.timeout(clock.left(ctx.trigger)):
                    yield answered.append
            except TimeoutError as exc:
                if clock.timeout is None:
                    raise
                raise TimeoutError(
                    f"step {ctx.trigger!r} timed out after {clock.timeout}s"
                ) from exc
            finally:
                clock.used += time.monotonic() - began
            if answered:
                usage = answered[-1].usage
                report(usage.input_tokens + usage.output_tokens)
    finally:
        if answered:  # a request that got no answer reported no usage (nor is it billed)
            charge(ctx, usage_of(answered[-1]))
        elif held is not None:  # nor does it hold its scope's budget any longer
            await _released(held, ctx)


async def _released(held: Held, ctx: StepContext) -> None:
    """`BudgetGate.release`; a store that fails to answer leaves the reservation to lapse
    (`RESERVATION_TTL`), and the request's own error is the one raised."""
    try:
        await BudgetGate.release(held, ctx)
    except StorageError as exc:
        _log.warning("run %s: a scope's reservation is left to lapse: %s", ctx.run_id, exc)


async def paid_request(
    spending: Spending | None,
    memory: Any,
    ctx: StepContext,
    model: str,
    send: Callable[[], Awaitable[ModelResponse]],
) -> ModelResponse:
    """Send one model request (`send`, plain or a stream read to its end) the paid way (see
    the module doc); `memory` names the run's budget scope."""
    async with _paying(spending, memory, ctx, model, _Clock(None)) as answered:
        response = await send()
        answered(response)
    return response


class PaidModel(WrapperModel):
    """The model of one try of an `llm()` step: every request pydantic-ai makes through it
    (the first, output retries) is a paid request (`paid_request`)."""

    def __init__(
        self, wrapped: Model, spending: Spending | None, memory: Any, ctx: StepContext
    ) -> None:
        super().__init__(wrapped)
        self._spending = spending
        self._memory = memory
        self._ctx = ctx
        self._clock = _Clock(spending.timeout if spending is not None else None)

    def _pay(self) -> contextlib.AbstractAsyncContextManager[Callable[[ModelResponse], None]]:
        label = model_label(self.wrapped)
        return _paying(self._spending, self._memory, self._ctx, label, self._clock)

    async def request(
        self,
        messages: list[ModelMessage],
        model_settings: ModelSettings | None,
        model_request_parameters: ModelRequestParameters,
    ) -> ModelResponse:
        async with self._pay() as answered:
            response = await self.wrapped.request(
                messages, model_settings, model_request_parameters
            )
            answered(response)
        return response

    @contextlib.asynccontextmanager
    async def request_stream(
        self,
        messages: list[ModelMessage],
        model_settings: ModelSettings | None,
        model_request_parameters: ModelRequestParameters,
        run_context: RunContext[Any] | None = None,
    ) -> AsyncIterator[StreamedResponse]:
        async with (
            self._pay() as answered,
            self.wrapped.request_stream(
                messages, model_settings, model_request_parameters, run_context
            ) as stream,
        ):
            try:
                yield stream
            finally:
                answered(stream.get())  # what streamed, also when the reader stopped early
