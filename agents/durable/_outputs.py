"""What the journal needs to give back what an output function or a deferred-call handler
answered: the run's output functions by name and their values rebuilt, `DeferredToolResults`
as JSON, and which capabilities answer deferred calls in the run."""

from __future__ import annotations

import typing
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import JsonValue, TypeAdapter
from pydantic_ai import DeferredToolRequests, DeferredToolResults
from pydantic_ai.agent import AbstractAgent
from pydantic_ai.capabilities import AbstractCapability, CombinedCapability, WrapperCapability
from pydantic_ai.output import NativeOutput, PromptedOutput, TextOutput, ToolOutput
from pydantic_ai.toolsets import AbstractToolset, FunctionToolset

from ..steps._tool_engine import args_digest

__all__ = [
    "RESULTS",
    "allows_deferred",
    "answers_in_run",
    "fingerprint",
    "output_functions",
    "rebuilt",
    "results",
]

RESULTS: TypeAdapter[DeferredToolResults] = TypeAdapter(DeferredToolResults)


def results(dumped: JsonValue) -> DeferredToolResults | None:
    return None if dumped is None else RESULTS.validate_python(dumped)


def answers_in_run(capability: AbstractCapability[Any]) -> bool:
    """Whether `capability` (or one inside it) answers deferred calls in the run."""
    found: list[bool] = []

    def visit(c: AbstractCapability[Any]) -> None:
        if isinstance(c, WrapperCapability | CombinedCapability):
            return  # they hand the calls on to the capabilities inside them
        hook = type(c).handle_deferred_tool_calls
        found.append(hook is not AbstractCapability.handle_deferred_tool_calls)

    capability.apply(visit)
    return any(found)


def rebuilt(function: Callable[..., Any] | None, value: JsonValue) -> Any:
    """A committed output function's value as the function returned it (validated against
    its return annotation; the JSON itself when it has none)."""
    if function is None:
        return value
    try:
        returns = typing.get_type_hints(function).get("return", Any)
    except Exception:  # an annotation that does not resolve: the JSON is all there is
        return value
    return TypeAdapter(returns).validate_python(value)


def output_functions(output_type: Any) -> dict[str, Callable[..., Any]]:
    """The output functions in an `output_type` (lists, `ToolOutput`, `NativeOutput`,
    `PromptedOutput`, `TextOutput`), by the name pydantic-ai gives their calls."""
    found: dict[str, Callable[..., Any]] = {}

    def visit(t: Any) -> None:
        if isinstance(t, Sequence) and not isinstance(t, str):
            for item in t:
                visit(item)
        elif isinstance(t, ToolOutput):
            visit(t.output)
        elif isinstance(t, NativeOutput | PromptedOutput):
            visit(t.outputs)
        elif isinstance(t, TextOutput):
            visit(t.output_function)
        elif callable(t) and not isinstance(t, type) and hasattr(t, "__name__"):
            found.setdefault(t.__name__, t)

    visit(output_type)
    return found


def _output_types(output_type: Any) -> list[Any]:
    types = list(output_type) if isinstance(output_type, Sequence) else [output_type]
    return [getattr(t, "outputs", getattr(t, "output", t)) for t in types]


def allows_deferred(output_type: Any) -> bool:
    flat: list[Any] = []
    for t in _output_types(output_type):
        flat.extend(t if isinstance(t, Sequence) and not isinstance(t, str) else [t])
    return DeferredToolRequests in flat


def fingerprint(agent: AbstractAgent[Any, Any]) -> str:
    """What tells one agent of a name from another: its function tools and output type."""
    tools: list[str] = []

    def visit(ts: AbstractToolset[Any]) -> None:
        if isinstance(ts, FunctionToolset):
            tools.extend(ts.tools)

    for toolset in agent.toolsets:
        toolset.apply(visit)
    outputs = [
        getattr(t, "__qualname__", None) or repr(t) for t in _output_types(agent.output_type)
    ]
    spec: dict[str, JsonValue] = {
        "tools": list[JsonValue](sorted(tools)),
        "output": list[JsonValue](outputs),
    }
    return args_digest(spec)[:16]
