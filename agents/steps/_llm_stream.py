"""An llm step's model request, streamed to the run's live channel as it arrives.

The step still makes its one `Agent.run` request; given an event stream handler, pydantic-ai
makes it with the model's streaming request API and builds the same result from the stream,
so what is committed is what the step commits unstreamed. The handler only copies the
stream's text and tool-call deltas onto the live channel (`StepContext.live`), tagged with
the step's seq and attempt: the tokens of a try that crashed or failed stay there under its
attempt, and the retried try streams under the next.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Awaitable, Callable
from typing import Any

from pydantic_ai.messages import (
    AgentStreamEvent,
    PartDeltaEvent,
    PartStartEvent,
    TextPart,
    TextPartDelta,
    ToolCallPart,
    ToolCallPartDelta,
)
from pydantic_ai.models.function import FunctionModel

from statemachine import StepContext
from statemachine.engine import StepLive

__all__ = ["Handler", "forward", "live_handler"]

Handler = Callable[[Any, AsyncIterable[AgentStreamEvent]], Awaitable[None]]


def live_handler(ctx: StepContext, model: object) -> Handler | None:
    """The handler that streams this try to the live channel; None when nothing watches
    the step (it runs outside a run) or the model cannot stream (a `FunctionModel` without
    a `stream_function`): then the request is made as before, unstreamed."""
    if not ctx.live.on or (isinstance(model, FunctionModel) and model.stream_function is None):
        return None
    live = ctx.live

    async def handler(_run: Any, stream: AsyncIterable[AgentStreamEvent]) -> None:
        async for event in stream:
            forward(live, event)

    return handler


def forward(live: StepLive, event: AgentStreamEvent) -> None:
    """Put the text or tool-call delta `event` carries on the live channel (others: nothing)."""
    if isinstance(event, PartStartEvent):
        part = event.part
        if isinstance(part, TextPart) and part.content:
            live.emit("text", part=event.index, text=part.content)
        elif isinstance(part, ToolCallPart):
            live.emit("tool_call", part=event.index, tool=part.tool_name,
                      call_id=part.tool_call_id, args=part.args_as_json_str())  # fmt: skip
    elif isinstance(event, PartDeltaEvent):
        delta = event.delta
        if isinstance(delta, TextPartDelta) and delta.content_delta:
            live.emit("text", part=event.index, text=delta.content_delta)
        elif isinstance(delta, ToolCallPartDelta):
            args = delta.args_delta
            text = args if isinstance(args, str) or args is None else str(args)
            live.emit("tool_call", part=event.index, tool=delta.tool_name_delta,
                      call_id=delta.tool_call_id, args=text)  # fmt: skip
