"""Tools the model may call, each call run as a transition of its own: `tool_calls()`.

An `llm(..., tools=[...], on_tool_calls="acting")` step offers the functions to the model as
deferred (external) tools: when the model calls some, its request ends, the response with the
calls is committed, and the run moves to "acting". There a `tool_calls(...)` transition runs
one pending call per firing, in the order the model made them, committing each result with
the call's `tool_call_id` in its idempotency key, and stays in "acting" until none is left.
The next `llm` firing hands the results back to the model (pydantic-ai's
`deferred_tool_results`) and the conversation goes on. After a crash, committed calls and
the model request that asked for them are not made again: they are in the history.

A tool is a plain function of JSON-able keyword arguments, sync or async; its docstring and
signature are what the model sees. A parameter named `ctx` receives the `StepContext` (its
`idempotency_key` names the call). Arguments that fail validation, an unknown tool name, or
a tool raising `pydantic_ai.ModelRetry` are answered to the model as a retry prompt, so it can
correct itself; any other exception fails the try, and the transition's retry policy applies.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import pydantic_core
from pydantic import BaseModel, ConfigDict, JsonValue, ValidationError, create_model
from pydantic_ai import ModelRetry
from pydantic_ai.messages import ModelMessagesTypeAdapter, ModelResponse, ToolCallPart
from pydantic_ai.tools import ToolDefinition

from statemachine import DefinitionError, RunError, StepContext, transition
from statemachine.engine import RetryPolicy, StepResult, Transition
from storage import Event

from ._tool_engine import call_tool

__all__ = [
    "FunctionTool",
    "ToolCallsStep",
    "function_tools",
    "tool_calls",
    "tool_results",
]

TOOL_CALLS_ROUTE = "tool_calls"
"""The route an `llm` step with tools takes when the model asked for tool calls."""


@dataclass(frozen=True, kw_only=True, slots=True)
class FunctionTool:
    """A Python function offered to the model: its name, arguments schema and how to call it."""

    fn: Callable[..., Any]
    name: str
    args: type[BaseModel]
    takes_ctx: bool

    @property
    def definition(self) -> ToolDefinition:
        return ToolDefinition(
            name=self.name,
            description=inspect.getdoc(self.fn) or None,
            parameters_json_schema=self.args.model_json_schema(),
        )

    async def call(self, arguments: dict[str, Any], ctx: StepContext) -> Any:
        """Validate `arguments` (raises `ValidationError`) and call the function."""
        values = dict(self.args.model_validate(arguments))
        if self.takes_ctx:
            values["ctx"] = ctx
        if inspect.iscoroutinefunction(self.fn):
            return await self.fn(**values)
        return await asyncio.to_thread(self.fn, **values)


def function_tools(tools: Sequence[Callable[..., Any]], where: str) -> tuple[FunctionTool, ...]:
    """Checked `FunctionTool`s for `tools` (raises `DefinitionError` naming the culprit)."""
    out: dict[str, FunctionTool] = {}
    for fn in tools:
        if not callable(fn):
            raise DefinitionError(f"{where}: tool {fn!r} is not callable")
        name = getattr(fn, "__name__", "")
        if not name.isidentifier():
            raise DefinitionError(f"{where}: tool {fn!r} needs a function name the model can use")
        if name in out:
            raise DefinitionError(f"{where}: two tools are named {name!r}")
        fields: dict[str, Any] = {}
        takes_ctx = False
        for p in inspect.signature(fn).parameters.values():
            if p.name == "ctx":
                takes_ctx = True
                continue
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD, p.POSITIONAL_ONLY):
                raise DefinitionError(
                    f"{where}: tool {name!r}: parameter {p.name!r} must be a plain keyword"
                    " argument (the model passes arguments by name)"
                )
            annotation = Any if p.annotation is p.empty else p.annotation
            fields[p.name] = (annotation, ... if p.default is p.empty else p.default)
        try:
            args = create_model(f"{name}_args", __config__=ConfigDict(extra="forbid"), **fields)
            args.model_json_schema()
        except Exception as exc:
            raise DefinitionError(f"{where}: tool {name!r}: unusable signature: {exc}") from None
        out[name] = FunctionTool(fn=fn, name=name, args=args, takes_ctx=takes_ctx)
    return tuple(out.values())


def _requested(event: Event) -> list[ToolCallPart]:
    """The tool calls in the last model response an event committed, in the model's order."""
    messages = ModelMessagesTypeAdapter.validate_python(event.messages)
    for message in reversed(messages):
        if isinstance(message, ModelResponse):
            return [p for p in message.parts if isinstance(p, ToolCallPart)]
    return []


def tool_results(events: Sequence[Event]) -> tuple[list[ToolCallPart], dict[str, JsonValue]]:
    """The calls the model's last response asked for, and the results committed since, by id.

    Read from the history alone: a result is the output of a `tool_calls` transition after
    the model request that asked for it.
    """
    last = next((i for i in range(len(events) - 1, -1, -1) if events[i].messages), None)
    if last is None:
        return [], {}
    results: dict[str, JsonValue] = {}
    for e in events[last + 1 :]:
        out = e.output
        if e.kind == "tool" and isinstance(out, dict) and isinstance(out.get("tool_call_id"), str):
            results[str(out["tool_call_id"])] = out
    return _requested(events[last]), results


@dataclass(frozen=True, kw_only=True, slots=True)
class ToolCallsStep:
    """Runs the first pending tool call the model asked for; routes "more" or "done"."""

    tools: tuple[FunctionTool, ...]
    policy: RetryPolicy
    kind: str = "tool"

    @property
    def label(self) -> str:
        return ", ".join(t.name for t in self.tools)

    @property
    def writes(self) -> tuple[str, ...]:
        return ()

    async def run(self, memory: Any, ctx: StepContext) -> StepResult[Any]:
        calls, results = tool_results(await ctx.history())
        pending = [c for c in calls if c.tool_call_id not in results]
        if not pending:
            raise RunError(
                f"step {ctx.trigger!r}: the model asked for no tool calls that are still to run"
                " (route the run here only from an llm step's on_tool_calls)"
            )
        call = pending[0]
        tool = next((t for t in self.tools if t.name == call.tool_name), None)

        async def attempt(key: str) -> Any:
            if tool is None:
                raise ModelRetry(
                    f"there is no tool {call.tool_name!r}; the tools are"
                    f" {', '.join(t.name for t in self.tools)}"
                )
            try:
                return await tool.call(call.args_as_dict(), replace(ctx, idempotency_key=key))
            except ValidationError as exc:
                raise ModelRetry(f"invalid arguments for {call.tool_name!r}: {exc}") from None

        return await call_tool(
            ctx, memory, tool=call.tool_name, call_id=call.tool_call_id,
            args=pydantic_core.to_jsonable_python(call.args_as_dict()), call=attempt,
            route="more" if len(pending) > 1 else "done",
        )  # fmt: skip


def tool_calls(
    trigger: str,
    source: str,
    dest: str,
    *,
    tools: Sequence[Callable[..., Any]],
    retries: int = 0,
    timeout: float | None = None,
    backoff: float = 0.5,
    max_visits: int | None = None,
    on_error: str | None = None,
) -> Transition:
    """A transition that runs the tool calls an `llm` step's model asked for, one per firing.

    Put it on the `on_tool_calls=` state of the llm step, with the same `tools`: it stays in
    `source` while calls are pending, then goes to `dest` (usually back to the llm step's
    source, so the model sees the results). `retries`, `timeout` and `backoff` apply to each
    call; `max_visits` caps the calls in one run.
    """
    what = f"tool_calls step {trigger!r}"
    if not tools:
        raise DefinitionError(f"{what}: give the tools the model may call")
    if retries < 0:
        raise DefinitionError(f"{what}: retries must be 0 or more, not {retries}")
    if source == dest:
        raise DefinitionError(f"{what}: dest must differ from source {source!r}")
    step = ToolCallsStep(
        tools=function_tools(tools, what),
        policy=RetryPolicy(attempts=retries + 1, backoff=backoff, timeout=timeout),
    )
    return transition(
        trigger,
        source,
        None,
        step,
        routes={"more": source, "done": dest},
        max_visits=max_visits,
        on_error=on_error,
    )
