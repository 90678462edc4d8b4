"""Agents on durable state machines: `Agent`, the step kinds, the CLI and example agents.

Errors are in `agents.errors`; approving a DurableAgent's tool call is `DurableAgent.approve`
(or `agentfsm approve`, from any process).

This is agentfsm's `agents` package (not openai-agents').

The names below are imported on first use (PEP 562), so that `agents.cli` can answer
`agentfsm --help` without importing pydantic-ai.
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._agent import Agent
    from ._report import render_report
    from .durable._agent import DurableAgent
    from .durable._journal import idempotency_key
    from .spending._budget import Budget
    from .spending._ratelimit import RateLimit
    from .steps._llm import llm
    from .steps._steps import tool, wait
    from .steps._tool_calls import tool_calls
    from .steps._tool_engine import StepPolicy

__all__ = [
    "Agent",
    "Budget",
    "DurableAgent",
    "RateLimit",
    "StepPolicy",
    "idempotency_key",
    "llm",
    "render_report",
    "tool",
    "tool_calls",
    "wait",
]

_WHERE = {
    "Agent": "_agent",
    "Budget": "spending._budget",
    "DurableAgent": "durable._agent",
    "RateLimit": "spending._ratelimit",
    "StepPolicy": "steps._tool_engine",
    "idempotency_key": "durable._journal",
    "llm": "steps._llm",
    "render_report": "_report",
    "tool": "steps._steps",
    "wait": "steps._steps",
    "tool_calls": "steps._tool_calls",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{_WHERE[name]}"), name)
    value.__module__ = __name__
    globals()[name] = value
    return value
