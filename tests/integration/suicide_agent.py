"""A child process whose second step SIGKILLs its own process on every try.

    python -m tests.integration.suicide_agent STORE_URL RUN_ID LOG_PATH [first]

Each try appends "{idempotency_key}\t{attempt}" to LOG_PATH (fsynced) before it dies. With
`first`, that step is the first, and the run is driven by `agent.run` (whose start stores the
first step's "started" item with the run).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

from pydantic import BaseModel

from agents import Agent, tool
from statemachine import StepContext
from storage import open_store

LEASE_TTL = 0.3
CRASH_RETRIES = 1
"""One death is retried, the second fails the run: the count carried from one process to the
next, and the limit, each happen once (more deaths would only repeat them, a process each)."""


class Memory(BaseModel):
    prepared: bool = False
    done: bool = False


def make_agent(log_path: str, first: bool = False) -> Agent[Memory]:
    def crash(memory: Memory, ctx: StepContext) -> bool:
        with open(log_path, "a") as log:
            log.write(f"{ctx.idempotency_key}\t{ctx.attempt}\n")
            log.flush()
            os.fsync(log.fileno())
        os.kill(os.getpid(), signal.SIGKILL)
        return True

    prepare = [] if first else [tool("prepare", "new", "ready", lambda m: True, into="prepared")]
    return Agent(
        name="suicidal", memory=Memory, initial="ready" if first else "new", final=["done"],
        on_error="failed", lease_ttl=LEASE_TTL,
        transitions=[
            *prepare,
            tool("crash", "ready", "done", crash, into="done", crash_retries=CRASH_RETRIES),
        ],
    )  # fmt: skip


async def main(url: str, run_id: str, log_path: str, mode: str = "") -> None:
    store = open_store(url, prefix="suicide")
    agent = make_agent(log_path, first=mode == "first")
    if mode == "first":
        run = await agent.run(store, Memory(), run_id=run_id)
    else:
        run = await agent.start(store, Memory(), run_id=run_id, lease_wait=10 * LEASE_TTL)
        await run.until_done()
    await store.close()
    print(run.status, flush=True)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
