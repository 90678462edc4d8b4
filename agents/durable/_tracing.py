"""Transition spans of a DurableAgent run, opened outside pydantic-ai's own spans.

A model request's transition commits inside the journal's model wrapper, the innermost layer
of pydantic-ai's model-request lifecycle, while pydantic-ai's instrumentation opens its `chat`
span (and `execute_tool` for a tool call) in an outer layer. This capability sits outside
that layer and opens the transition's span there (`statemachine._tracing`, pending): the
runner's span joins it when the transition fires, so `chat` and `execute_tool` nest inside
the transition's span, as they do in a state-table agent's llm and tool steps. A request or
call the journal answers from the history fires nothing: its pending span is never reported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic_ai import RunContext
from pydantic_ai.capabilities import AbstractCapability, CapabilityOrdering, Instrumentation
from pydantic_ai.messages import ModelResponse, ToolCallPart
from pydantic_ai.tools import ToolDefinition

from statemachine import Run
from statemachine.engine import traced, transition_span

from ._steps import MODEL_REQUEST, TOOL_CALL, DurableMemory

__all__ = ["traced_steps"]


def traced_steps(run: Run[DurableMemory]) -> list[AbstractCapability[Any]]:
    """The capability for `Agent.run(capabilities=...)`, or none when nothing is traced."""
    return [_TracedSteps(run)] if traced() else []


@dataclass(eq=False)
class _TracedSteps(AbstractCapability[Any]):
    run: Run[DurableMemory] = field(repr=False)

    def get_ordering(self) -> CapabilityOrdering:
        return CapabilityOrdering(position="outermost", wraps=[Instrumentation])

    async def wrap_model_request(
        self, ctx: RunContext[Any], *, request_context: Any, handler: Any
    ) -> ModelResponse:
        with transition_span(self.run.record, MODEL_REQUEST, "llm", pending=True):
            response: ModelResponse = await handler(request_context)
            return response

    async def wrap_tool_execute(
        self,
        ctx: RunContext[Any],
        *,
        call: ToolCallPart,
        tool_def: ToolDefinition,
        args: Any,
        handler: Any,
    ) -> Any:
        with transition_span(self.run.record, TOOL_CALL, "tool", pending=True):
            return await handler(args)
