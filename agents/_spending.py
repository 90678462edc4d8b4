"""What an `llm()` step spends, kept in check: its agent's budgets and shared rate limits
around each model request (`spend`), and what the request paid charged to the transition."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from pydantic_ai.exceptions import UsageLimitExceeded
from pydantic_ai.usage import RunUsage

from statemachine import RetryPolicy, StepContext

from ._budget import BudgetGate
from ._ratelimit import RateLimit, rate_limited
from ._tool_engine import charge

__all__ = ["Spending", "spend"]

T = TypeVar("T")


@dataclass(frozen=True, kw_only=True, slots=True)
class Spending:
    """An agent's budgets and rate limits, as its `llm()` steps are bound to them."""

    gate: BudgetGate | None = None
    rate_limits: tuple[RateLimit, ...] = ()
    timeout: float | None = None
    """With rate limits: the step's timeout, on the request alone (see `policy`)."""

    def policy(self, policy: RetryPolicy) -> tuple[Spending, RetryPolicy]:
        """This spending and the step's policy, for a step with `policy`: with rate limits,
        waiting for a slot counts against the timeout only where a limit says so, so the
        request is timed here (with the waits of such limits), not by the runner."""
        if not self.rate_limits:
            return self, policy
        moved = Spending(gate=self.gate, rate_limits=self.rate_limits, timeout=policy.timeout)
        return moved, replace(policy, timeout=None)


async def spend(
    spending: Spending | None,
    memory: Any,
    ctx: StepContext,
    model: str,
    requests: int,
    usage: RunUsage,
    request: Callable[[int], Awaitable[T]],
) -> T:
    """`request(limit)` (one pydantic-ai run of at most `limit` model requests, counting into
    `usage`) once the budgets admit it (`StepHalted` otherwise) and the rate limits gave it a
    slot; what it paid is charged to the transition (`ctx.spent`) whatever happens."""
    if spending is None:
        try:
            return await request(requests)
        finally:
            charge(ctx, usage)
    if spending.gate is not None:
        left = await spending.gate.admit(memory, ctx)
        requests = requests if left is None else max(min(requests, left), 1)
    try:
        async with rate_limited(ctx, spending.rate_limits, model, spending.timeout) as report:
            try:
                return await _within(request(requests), spending.timeout, ctx.trigger)
            finally:
                report(usage.input_tokens + usage.output_tokens)
    except UsageLimitExceeded:
        charge(ctx, usage)
        usage = RunUsage()  # charged: not again below
        if spending.gate is not None:
            await spending.gate.admit(memory, ctx)  # output retries reached the budget: halt
        raise
    finally:
        charge(ctx, usage)


async def _within(request: Awaitable[T], seconds: float | None, trigger: str) -> T:
    if seconds is None:
        return await request
    try:
        return await asyncio.wait_for(request, seconds)
    except TimeoutError:
        raise TimeoutError(f"step {trigger!r} timed out after {seconds}s") from None
