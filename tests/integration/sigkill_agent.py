"""A child process for the crash tests: drives one run of a 10-step agent to its end.

Each step appends `"{idempotency_key}\t{trigger}\n"` to a side-effect log (fsynced) and sleeps a
little, so a SIGKILL lands inside steps as well as between them.

    python -m tests.integration.sigkill_agent STORE_URL RUN_ID LOG_PATH [HANG_AT]

Prints "ready" once it holds the run. With HANG_AT = N (1, 2, ...), the N-th step this process
runs prints "in TRIGGER" after its side effect and never returns: the parent kills it there.
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
import time
from collections.abc import Callable

from pydantic import BaseModel

from agents import Agent, tool
from statemachine import StepContext
from storage import open_store

STEPS = 10
LEASE_TTL = 0.4


class Progress(BaseModel):
    done: list[str] = []


def make_step(log_path: str, hang_at: int = 0) -> Callable[[Progress, StepContext], list[str]]:
    ran = 0

    def step(memory: Progress, ctx: StepContext) -> list[str]:
        """A sync tool (run in a worker thread, the default) with a side effect."""
        nonlocal ran
        ran += 1
        with open(log_path, "a") as log:
            log.write(f"{ctx.idempotency_key}\t{ctx.trigger}\n")
            log.flush()
            os.fsync(log.fileno())
        if ran == hang_at:
            print(f"in {ctx.trigger}", flush=True)
            time.sleep(3600)  # killed here, after the side effect, before the commit
        time.sleep(random.uniform(0.02, 0.06))
        return [*memory.done, ctx.trigger]

    return step


def agent(log_path: str, hang_at: int = 0) -> Agent[Progress]:
    step = make_step(log_path, hang_at)
    return Agent(
        name="ten_steps",
        memory=Progress,
        initial="s0",
        final=[f"s{STEPS}"],
        lease_ttl=LEASE_TTL,
        transitions=[
            tool(f"t{i}", f"s{i}", f"s{i + 1}", step, into="done", retries=5) for i in range(STEPS)
        ],
    )


async def main(url: str, run_id: str, log_path: str, hang_at: str = "0") -> None:
    store = open_store(url, prefix="crash")
    machine = agent(log_path, int(hang_at))
    run = await machine.start(store, Progress(), run_id=run_id, lease_wait=10 * LEASE_TTL)
    print("ready", flush=True)  # it holds the run: the parent times its kill from here
    await run.until_done()
    await store.close()
    print(run.status, flush=True)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
