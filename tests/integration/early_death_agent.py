"""A child process that starts (or resumes) a run the way `agent.run` does, holding its lease
from the start, and SIGKILLs itself before the first step when told to.

    python -m tests.integration.early_death_agent STORE_URL RUN_ID LOG_PATH die|live

The one step appends its attempt to LOG_PATH (fsynced) before it returns.
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


class Memory(BaseModel):
    done: bool = False


def make_agent(log_path: str) -> Agent[Memory]:
    def work(memory: Memory, ctx: StepContext) -> bool:
        with open(log_path, "a") as log:
            log.write(f"{ctx.attempt}\n")
            log.flush()
            os.fsync(log.fileno())
        return True

    return Agent(
        name="early", memory=Memory, initial="new", final=["done"], lease_ttl=LEASE_TTL,
        crash_retries=0,
        transitions=[tool("work", "new", "done", work, into="done")],
    )  # fmt: skip


async def main(url: str, run_id: str, log_path: str, mode: str) -> None:
    store = open_store(url, prefix="early")
    agent = make_agent(log_path)
    run = await agent.start(store, Memory(), run_id=run_id, hold=True, lease_wait=10 * LEASE_TTL)
    if mode == "die":  # created and leased in one round trip; dead before any step
        os.kill(os.getpid(), signal.SIGKILL)
    await run.until_done()
    await store.close()
    print(run.status, flush=True)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
