"""What a tool call does to its run beyond its result, across a replay: a replay answers a
committed call from its recorded outcome without running the tool, so what the call added to the
run's usage (an agent it ran with `usage=ctx.usage`) is recorded with it and added again
(`usage_json`, `add_usage`), and what it would enqueue is refused (`NoEnqueue`)."""

from __future__ import annotations

from typing import Any

import pydantic_core
from pydantic import JsonValue
from pydantic_ai import RunContext
from pydantic_ai.exceptions import UserError
from pydantic_ai.usage import RunUsage

__all__ = ["NoEnqueue", "add_usage", "usage_json"]


class NoEnqueue(list[Any]):
    """A tool call's `ctx.pending_messages`: a replay answers the call from its recorded
    outcome without running the tool, so what it enqueued would be dropped then; refused, as
    pydantic-ai's own engines refuse it inside their durable units."""

    def append(self, item: Any) -> None:
        raise UserError(
            "`ctx.enqueue()` is not supported inside a durable tool call: a replay answers the"
            " call from its recorded outcome without running the tool again, so the enqueued"
            " messages would be dropped. Enqueue them from outside the tool call (a capability"
            " hook, or `AgentRun.enqueue`)"
        )


def usage_json(usage: RunUsage) -> dict[str, JsonValue]:
    """`usage` as JSON, its zero fields left out (empty: the call added nothing)."""
    dumped: dict[str, JsonValue] = pydantic_core.to_jsonable_python(usage)
    return {k: v for k, v in dumped.items() if v}


def add_usage(ctx: RunContext[Any], added: JsonValue) -> None:
    """A replayed tool call adds to the run's usage what the call added when it ran."""
    if isinstance(added, dict):
        ctx.usage.incr(RunUsage(**added))  # type: ignore[arg-type]
