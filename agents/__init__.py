"""Agents on durable state machines: `Agent`, the step kinds, the CLI and example agents.

This is agentfsm's `agents` package (not openai-agents').
"""

from ._agent import Agent
from ._durable import DurableAgent, DurableRunFailed, approve_tool_call
from ._durable_journal import idempotency_key
from ._llm import llm
from ._report import render_report, report_html
from ._steps import tool, wait
from ._tool_calls import tool_calls
from ._tool_engine import StepPolicy

__all__ = [
    "Agent",
    "DurableAgent",
    "DurableRunFailed",
    "StepPolicy",
    "approve_tool_call",
    "idempotency_key",
    "llm",
    "render_report",
    "report_html",
    "tool",
    "tool_calls",
    "wait",
]

for _name in __all__:
    globals()[_name].__module__ = __name__
del _name
