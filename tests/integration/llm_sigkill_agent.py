"""A child process whose model blocks inside its second request until it is killed.

    python -m tests.integration.llm_sigkill_agent STORE_URL RUN_ID WORKDIR block|normal

Every model request appends a line to WORKDIR/requests.log; in `block` mode the second
request first touches WORKDIR/blocked, then hangs.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

from pydantic import BaseModel
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from agents import Agent, llm, tool
from storage import open_store

LEASE_TTL = 0.5


class Chat(BaseModel):
    question: str
    outline: str = ""
    facts: int = 0
    answer: str = ""


def make_agent(workdir: Path, block: bool) -> Agent[Chat]:
    calls = 0

    def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        nonlocal calls
        calls += 1
        with open(workdir / "requests.log", "a") as log:
            log.write(f"{calls}\n")
        if block and calls == 2:
            (workdir / "blocked").touch()
            time.sleep(3600)  # killed here, mid-request
        return ModelResponse(parts=[TextPart(f"reply to request {len(messages)}")])

    return Agent(
        name="chat", memory=Chat, model=FunctionModel(model), initial="new", final=["done"],
        lease_ttl=LEASE_TTL,
        transitions=[
            llm("outline", "new", "outlined", prompt=lambda m: m.question, into="outline"),
            tool("count", "outlined", "counted", lambda m: len(m.outline), into="facts"),
            llm("answer", "counted", "done", prompt=lambda m: f"answer with {m.facts}",
                into="answer"),
        ],
    )  # fmt: skip


async def main(url: str, run_id: str, workdir: str, mode: str) -> None:
    store = open_store(url, prefix="llmcrash")
    agent = make_agent(Path(workdir), block=mode == "block")
    run = await agent.start(store, Chat(question="why?"), run_id=run_id, lease_wait=5)
    await run.until_done()
    await store.close()
    print(run.status, flush=True)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
