"""The data-analysis agent written the plain pydantic-ai way, made durable with one line.

    python -m agents.examples.durable_analyst 3 4 5 4 3 5 4 97 --run-id analysis-1
    python -m agents.examples.durable_analyst --graph        # the machine, as Mermaid text

`analyst` is an ordinary `pydantic_ai.Agent` with two `@analyst.tool_plain` tools and a typed
output. `DurableAgent(analyst, store=...)` runs it with every model request and every tool call
committed: kill the process at any moment and run the same command again, and it goes on from
the last commit without asking the model or running a tool twice (it prints how many model
requests this process made: 0 for a run that was already done). The same run id with other
numbers is refused with a message saying what to do. It uses a real model when
`OPENAI_API_KEY` or `ANTHROPIC_API_KEY` is set (or `AGENTFSM_MODEL`), an offline one otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import sys
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, Field
from pydantic_ai import Agent
from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    ModelResponse,
    ToolCallPart,
    ToolReturnPart,
    UserPromptPart,
)
from pydantic_ai.models.function import AgentInfo, FunctionModel

from agents import DurableAgent
from agents.examples._offline import choose_model
from statemachine import RunError
from storage import Event, open_store

__all__ = ["Findings", "analyst", "detect_anomalies", "main", "summary_statistics"]


class Findings(BaseModel):
    """The analyst's answer."""

    summary: str = Field(description="One paragraph for a reader who has not seen the data.")
    mean: float
    anomalies: list[float] = Field(description="The values flagged as anomalies.")


def _offline_brain(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    """A scripted analyst: ask for statistics and anomalies at once, then write the findings."""
    name = "offline:analyst"
    results: dict[str, Any] = {
        p.tool_name: p.content
        for m in messages if isinstance(m, ModelRequest) for p in m.parts
        if isinstance(p, ToolReturnPart)
    }  # fmt: skip
    if not results:
        prompt = next(
            (p.content for m in messages if isinstance(m, ModelRequest) for p in m.parts
             if isinstance(p, UserPromptPart) and isinstance(p.content, str)),
            "",
        )  # fmt: skip
        values = [float(v) for v in re.findall(r"-?\d+(?:\.\d+)?", prompt)]
        calls = [
            ToolCallPart("summary_statistics", {"values": values}, tool_call_id="call-stats"),
            ToolCallPart("detect_anomalies", {"values": values}, tool_call_id="call-anomalies"),
        ]
        return ModelResponse(parts=calls, model_name=name)
    found, flagged = results.get("summary_statistics"), results.get("detect_anomalies")
    stats: dict[str, float] = found if isinstance(found, dict) else {}
    flagged = flagged if isinstance(flagged, list) else []
    skew = "right-skewed" if stats.get("mean", 0) > stats.get("median", 0) else "about symmetric"
    summary = (
        f"{int(stats.get('count', 0))} values, mean {stats.get('mean')} and median"
        f" {stats.get('median')} ({skew}), spread {stats.get('stdev')};"
        f" anomalies: {', '.join(str(a) for a in flagged) or 'none'}."
    )
    args = {"summary": summary, "mean": stats.get("mean", 0.0), "anomalies": flagged}
    output_tool = info.output_tools[0].name
    return ModelResponse(
        parts=[ToolCallPart(output_tool, args, tool_call_id="call-findings")], model_name=name
    )


def offline_analyst() -> FunctionModel:
    return FunctionModel(_offline_brain, model_name="offline:analyst")


analyst = Agent(
    choose_model(offline_analyst),
    name="durable_analyst",
    output_type=Findings,
    instructions="You are a careful data analyst. Use the tools for every number you report.",
    defer_model_check=True,
)


@analyst.tool_plain
def summary_statistics(values: list[float]) -> dict[str, float]:
    """Count, mean, median, population standard deviation, min and max of the values."""
    return {
        "count": len(values),
        "mean": round(statistics.fmean(values), 4),
        "median": round(statistics.median(values), 4),
        "stdev": round(statistics.pstdev(values), 4),
        "min": min(values),
        "max": max(values),
    }


@analyst.tool_plain
def detect_anomalies(values: list[float], threshold: float = 3.5) -> list[float]:
    """Values whose robust z-score (median absolute deviation based) exceeds `threshold`."""
    median = statistics.median(values)
    mad = statistics.median(abs(x - median) for x in values) or 1e-9
    return [x for x in values if abs(x - median) / (1.4826 * mad) > threshold]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agents.examples.durable_analyst")
    parser.add_argument("values", nargs="*", type=float, default=[3, 4, 5, 4, 3, 5, 4, 97])
    parser.add_argument("--store", default=None, help="store URL (default: $AGENTFSM_STORE)")
    parser.add_argument("--run-id", default=None, help="the same id resumes the same run")
    parser.add_argument("--graph", action="store_true", help="print the machine as Mermaid")
    args = parser.parse_args(argv)
    try:
        return asyncio.run(_main(args.values, args.store, args.run_id, args.graph))
    except RunError as exc:  # e.g. a run id used before with other numbers: say so, and how
        print(f"error: {exc}", file=sys.stderr)
        return 2


async def _main(values: list[float], url: str | None, run_id: str | None, graph: bool) -> int:
    store = open_store(url)
    made: list[Event] = []  # what this process committed (a run read back commits nothing)
    try:
        durable = DurableAgent(analyst, store=store)  # the one line
        if graph:
            print(durable.graph().mermaid())
            return 0
        result = await durable.run(
            f"Analyse these numbers: {json.dumps(values)}", run_id=run_id, on_event=made.append
        )
    finally:
        await store.close()
    print(result.output.model_dump_json(indent=2))
    requests = sum(e.trigger == "model_request" for e in made)
    calls = sum(e.trigger == "tool_call" for e in made)
    print(f"run {result.run_id}: {requests} model requests and {calls} tool calls made by this"
          f" process (the run: {result.usage.requests} and {result.usage.tool_calls})")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
