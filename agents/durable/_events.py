"""`DurableAgent.run_stream_events`: pydantic-ai's `AgentRunEvents` over a durable run."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from pydantic_ai.agent import AgentRunEvents, AgentRunResult, EventStreamHandler

__all__ = ["stream_events"]

OutputT = TypeVar("OutputT")


@asynccontextmanager
async def stream_events(
    run: Callable[[EventStreamHandler[Any]], Awaitable[AgentRunResult[OutputT]]],
) -> AsyncIterator[AgentRunEvents[OutputT]]:
    """The events of `run(handler)` as pydantic-ai's `run_stream_events` hands them out: the
    run starts on the first event asked for, ends with an `AgentRunResultEvent`, and is
    stopped (cancelled: it goes on from its last commit when run again) when the block is
    left early."""
    events = AgentRunEvents(run)
    try:
        yield events
    finally:
        await events.aclose()
