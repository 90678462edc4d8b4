"""A child process running a plain pydantic-ai agent through `DurableAgent`.

    python -m tests.integration.durable_agent STORE_URL RUN_ID WORKDIR crash|normal

The agent's `FunctionModel` asks for two tool calls in one response (`lookup`, then `convert`),
then answers with what they returned. Every model request appends "request" to
WORKDIR/effects.log, every tool call "{tool}\t{idempotency_key}". In `crash` mode `convert`
SIGKILLs its process after logging, before it returns. Prints the output.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

from pydantic_ai import Agent, RunContext
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
from storage import open_store

LEASE_TTL = 0.5
RATES = {"EUR": 1.1, "GBP": 1.25}


def make_agent(workdir: Path, crash: bool) -> Agent[str, str]:
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

    agent = Agent(FunctionModel(brain), deps_type=str, instructions="Answer in USD.")

    @agent.tool
    def lookup(ctx: RunContext[str], item: str) -> str:
        """Look an item up in the shop's catalogue."""
        note(f"lookup\t{idempotency_key()}")
        return f"{item} sold by {ctx.deps}"

    @agent.tool_plain
    def convert(amount: float, currency: str) -> float:
        """Convert an amount to USD."""
        note(f"convert\t{idempotency_key()}")
        if crash:
            os.kill(os.getpid(), signal.SIGKILL)
        return round(amount * RATES[currency], 2)

    return agent


async def main(url: str, run_id: str, workdir: str, mode: str) -> None:
    store = open_store(url, prefix="durablecrash")
    durable = DurableAgent(
        make_agent(Path(workdir), crash=mode == "crash"),
        store=store, name="shop", lease_ttl=LEASE_TTL,
    )  # fmt: skip
    result = await durable.run(
        "What does the book cost in USD?", run_id=run_id, deps="Acme", lease_wait=10 * LEASE_TTL
    )
    await store.close()
    print(result.output, flush=True)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
