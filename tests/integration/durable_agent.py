"""A child process running a plain pydantic-ai agent through `DurableAgent`.

    python -m tests.integration.durable_agent STORE_URL RUN_ID WORKDIR MODE

The agent's `FunctionModel` asks for two tool calls in one response (`lookup`, then
`convert`), then answers with what they returned. Every model request appends "request" to
WORKDIR/effects.log, every tool call "{tool}\t{idempotency_key}". Modes:

- `normal`: run to the end; prints the output.
- `crash`: `convert` SIGKILLs its own process after logging, before it returns.
- `gated`: `convert` needs approval; prints "deferred CALL_IDS" when the run parks.
- `approve`: approves `call-convert` from this process without the agent (as a CLI would).
- `hang`: like `gated`, but the approved `convert` writes its key to WORKDIR/in-call when it
  starts (atomically: a temporary file renamed) and then never returns (the parent kills
  the process).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

from pydantic_ai import Agent, DeferredToolRequests, RunContext
from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    ModelResponse,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
)
from pydantic_ai.models.function import AgentInfo, FunctionModel

from agents import DurableAgent, idempotency_key
from agents._operations import approve_tool_call
from storage import open_store

LEASE_TTL = 0.5
RATES = {"EUR": 1.1, "GBP": 1.25}
PREFIX = "durablecrash"


def make_agent(workdir: Path, mode: str) -> Agent[str, str | DeferredToolRequests]:
    log = workdir / "effects.log"

    def note(line: str) -> None:
        with open(log, "a") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())

    def brain(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        note("request")
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
        answer = "; ".join(f"{p.tool_name}: {p.content}" for p in done)
        return ModelResponse(parts=[TextPart(answer)])

    agent = Agent(
        FunctionModel(brain), deps_type=str, instructions="Answer in USD.",
        output_type=[str, DeferredToolRequests],
    )  # fmt: skip

    @agent.tool
    def lookup(ctx: RunContext[str], item: str) -> str:
        """Look an item up in the shop's catalogue."""
        note(f"lookup\t{idempotency_key()}")
        return f"{item} sold by {ctx.deps}"

    @agent.tool_plain(requires_approval=mode in ("gated", "hang"))
    async def convert(amount: float, currency: str) -> float:
        """Convert an amount to USD."""
        note(f"convert\t{idempotency_key()}")
        if mode == "crash":
            os.kill(os.getpid(), signal.SIGKILL)
        if mode == "hang":
            # Written whole, then renamed: the parent never reads it half-written.
            (workdir / "in-call.tmp").write_text(idempotency_key())
            os.replace(workdir / "in-call.tmp", workdir / "in-call")
            await asyncio.Event().wait()
        return round(amount * RATES[currency], 2)

    return agent


async def answer(url: str, run_id: str, workdir: str, mode: str) -> str:
    """What the process prints, one line: the run's output, "deferred ...", or "approved"."""
    store = open_store(url, prefix=PREFIX)
    try:
        if mode == "approve":
            await approve_tool_call(store, run_id, "call-convert")
            return "approved"
        durable = DurableAgent(
            make_agent(Path(workdir), mode), store=store, name="shop", lease_ttl=LEASE_TTL,
        )  # fmt: skip
        result = await durable.run(
            "What does the book cost in USD?", run_id=run_id, deps="Acme",
            lease_wait=10 * LEASE_TTL,
        )  # fmt: skip
    finally:
        await store.close()
    output = result.output
    if isinstance(output, DeferredToolRequests):
        return " ".join(["deferred", *(c.tool_call_id for c in output.approvals)])
    return str(output)


async def main(url: str, run_id: str, workdir: str, mode: str) -> None:
    print(await answer(url, run_id, workdir, mode), flush=True)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
