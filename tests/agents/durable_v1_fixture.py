"""The runs of `data/durable_v1.jsonl`: stored by the DurableAgent of commit 89c9f1c (the
journal format before DurableAgent became a pydantic-ai durability engine), so that a test can
check runs stored in that format still resume.

    python -m tests.agents.durable_v1_fixture      # rewrites data/durable_v1.jsonl

Run it only with that commit checked out (the file must stay what the old code stored: run with
newer code it would store the newer format). `make_agent` is the agent both the maker and the
test use: `lookup` and `convert` (which needs approval) called in one model response, then
an answer with their results.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from pydantic_ai import Agent, DeferredToolRequests
from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    ModelResponse,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
)
from pydantic_ai.models.function import AgentInfo, FunctionModel

FIXTURE = Path(__file__).parent / "data" / "durable_v1.jsonl"
PARKED, CUT, DONE = "v1-parked", "v1-cut", "v1-done"
"""Parked on the approval of `convert`; cut off (cancelled) inside `convert`; finished."""
EXPECTED = "lookup: book; convert: 25.0"


def make_agent(ran: list[str], *, cut: bool = False, gated: bool = True) -> Agent[None, object]:
    def brain(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        ran.append("request")
        done = [
            p for m in messages if isinstance(m, ModelRequest) for p in m.parts
            if isinstance(p, ToolReturnPart)
        ]  # fmt: skip
        if not done:
            return ModelResponse(parts=[
                ToolCallPart("lookup", {"item": "book"}, tool_call_id="call-lookup"),
                ToolCallPart("convert", {"amount": 20, "currency": "GBP"},
                             tool_call_id="call-convert"),
            ])  # fmt: skip
        return ModelResponse(parts=[TextPart("; ".join(f"{p.tool_name}: {p.content}"
                                                       for p in done))])  # fmt: skip

    agent: Agent[None, object] = Agent(
        FunctionModel(brain), name="shop_v1", output_type=[str, DeferredToolRequests]
    )

    @agent.tool_plain
    def lookup(item: str) -> str:
        """Look an item up."""
        ran.append("lookup")
        return item

    @agent.tool_plain(requires_approval=gated)
    async def convert(amount: float, currency: str) -> float:
        """Convert an amount to USD."""
        ran.append("convert")
        if cut:
            raise asyncio.CancelledError  # as if the process died here
        return round(amount * 1.25, 2)

    return agent


async def make() -> None:  # pragma: no cover  (run by hand, with the old code)
    from pydantic_ai import DeferredToolResults

    from agents import DurableAgent
    from storage import open_store
    from storage.backup import export_runs

    store = open_store("memory://")
    ran: list[str] = []
    await DurableAgent(make_agent(ran), store=store).run("price?", run_id=PARKED)
    await DurableAgent(make_agent(ran), store=store).run("price?", run_id=DONE)
    await DurableAgent(make_agent(ran), store=store).run(
        run_id=DONE, deferred_tool_results=DeferredToolResults(approvals={"call-convert": True})
    )
    with contextlib.suppress(asyncio.CancelledError):  # the cut: the run stays running
        await DurableAgent(make_agent(ran, cut=True, gated=False), store=store).run(
            "price?", run_id=CUT
        )
    lines = [line async for line in export_runs(store, [PARKED, CUT, DONE])]
    FIXTURE.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":  # pragma: no cover
    asyncio.run(make())
