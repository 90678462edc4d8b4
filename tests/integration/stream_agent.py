"""A child process whose model streams its answer, gated by files (no sleeps against timing).

    python -m tests.integration.stream_agent drive STORE_URL RUN_ID WORKDIR gated|crash|normal
    python -m tests.integration.stream_agent watch STORE_URL RUN_ID [AFTER]

`drive` starts (or resumes) the run. Its model touches WORKDIR/streaming when a request
begins, streams "one ", "two ", then: `gated` waits for WORKDIR/release before "three";
`crash` hangs (to be killed); `normal` goes straight on. `watch` prints each item of
`Run.watch` as a JSON line, and ends when the watch does.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from pydantic import BaseModel
from pydantic_ai.messages import ModelMessage
from pydantic_ai.models.function import AgentInfo, FunctionModel

from agents import Agent, llm
from statemachine.engine import watch
from storage import open_store

TOKENS = ["one ", "two ", "three ", "four"]


class Chat(BaseModel):
    question: str
    answer: str = ""


def make_agent(workdir: Path, mode: str) -> Agent[Chat]:
    async def stream(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str]:
        (workdir / "streaming").touch()
        for token in TOKENS[:2]:
            yield token
        if mode == "crash":
            await asyncio.sleep(3600)  # killed here, mid-stream
        while mode == "gated" and not (workdir / "release").exists():  # noqa: ASYNC110 (a file)
            await asyncio.sleep(0.01)
        for token in TOKENS[2:]:
            yield token

    return Agent(
        name="streamer", memory=Chat, model=FunctionModel(stream_function=stream),
        initial="new", final=["done"], lease_ttl=0.5,
        transitions=[llm("answer", "new", "done", prompt=lambda m: m.question, into="answer")],
    )  # fmt: skip


async def drive(url: str, run_id: str, workdir: str, mode: str) -> None:
    store = open_store(url)
    agent = make_agent(Path(workdir), mode)
    if await store.load(run_id) is None:
        run = await agent.start(store, Chat(question="count"), run_id=run_id, lease_wait=5)
    else:
        run = await agent.resume(store, run_id, lease_wait=5)
    await run.until_done()
    await store.close()
    print(run.status, flush=True)


async def show(url: str, run_id: str, after: str | None) -> None:
    store = open_store(url)
    async for item in watch(store, run_id, after=after):
        line = {"offset": item.offset, "kind": item.kind, "seq": item.seq,
                "attempt": item.attempt, "text": item.text}  # fmt: skip
        if item.event is not None:
            line["trigger"] = item.event.trigger
            line["answer"] = item.event.patch.get("answer", "")
        print(json.dumps(line), flush=True)
    await store.close()


if __name__ == "__main__":
    if sys.argv[1] == "drive":
        asyncio.run(drive(*sys.argv[2:6]))
    else:
        asyncio.run(show(sys.argv[2], sys.argv[3], sys.argv[4] if len(sys.argv) > 4 else None))
