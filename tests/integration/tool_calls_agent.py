"""A child process running the researcher whose second `read` call SIGKILLs its process.

    python -m tests.integration.tool_calls_agent STORE_URL RUN_ID WORKDIR crash|normal

Every model request appends "request" to WORKDIR/effects.log, every tool call
"{tool}\t{idempotency_key}". In `crash` mode the second `read` kills the process after
logging, before it returns: a crash between two tool calls of one model response.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

from pydantic_ai.messages import ModelMessage, ModelResponse
from pydantic_ai.models.function import AgentInfo, FunctionModel

from agents import Agent, llm, tool_calls
from agents.examples import researcher as example
from statemachine import StepContext
from storage import open_store

LEASE_TTL = 0.5


def make_agent(workdir: Path, crash: bool) -> Agent[example.Research]:
    log = workdir / "effects.log"

    def note(line: str) -> None:
        with open(log, "a") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())

    def brain(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        note("request")
        return example._offline_brain(messages, info)

    def search(query: str, ctx: StepContext) -> list[str]:
        """Search the library."""
        note(f"search\t{ctx.idempotency_key}")
        return example.search(query)

    def read(title: str, ctx: StepContext) -> str:
        """Read one document."""
        note(f"read\t{ctx.idempotency_key}")
        if crash and ctx.idempotency_key.endswith("call-read-1"):
            os.kill(os.getpid(), signal.SIGKILL)
        return example.read(title)

    tools = [search, read]
    return Agent(
        name="researcher", memory=example.Research, model=FunctionModel(brain),
        initial="question", final=["answered"], on_error="failed", lease_ttl=LEASE_TTL,
        transitions=[
            llm("think", ["question", "observed"], "answered", prompt=lambda m: m.question,
                tools=tools, on_tool_calls="acting", into="answer", max_visits=6),
            tool_calls("act", "acting", "observed", tools=tools, retries=2),
        ],
    )  # fmt: skip


async def main(url: str, run_id: str, workdir: str, mode: str) -> None:
    store = open_store(url, prefix="toolcrash")
    agent = make_agent(Path(workdir), crash=mode == "crash")
    question = example.Research(question="How do leases and idempotency keep writes safe?")
    run = await agent.start(store, question, run_id=run_id, lease_wait=10 * LEASE_TTL)
    await run.until_done()
    await store.close()
    print(run.status, flush=True)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
