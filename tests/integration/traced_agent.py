"""A child process for the tracing crash test: drives one run of a five-step agent, its
spans written to a file as JSON Lines (`tests.tracing.JsonLinesExporter`).

Step t1 fails on its first try (a retry, a span event); t2 and t3 block on their first try
after printing `blocked t2` / `blocked t3`, for the test to SIGKILL the process there.

    python -m tests.integration.traced_agent STORE_URL PREFIX RUN_ID SPANS MODE

MODE: `start` (start the run and drive it), `resume` (resume and drive it), `worker`
(queue it and run a `Worker` until the run is done; Redis only).
"""

from __future__ import annotations

import asyncio
import sys

from pydantic import BaseModel

from agents import Agent, tool
from statemachine import StepContext, Worker
from storage import RedisStore, open_store

from ..tracing import JsonLinesExporter, install

STEPS = 5


class Progress(BaseModel):
    done: list[str] = []


async def step(memory: Progress, ctx: StepContext) -> list[str]:
    if ctx.trigger == "t1" and ctx.attempt == 1:
        raise RuntimeError("t1 fails on its first try")
    if ctx.trigger in ("t2", "t3") and ctx.attempt == 1:
        print(f"blocked {ctx.trigger}", flush=True)  # every span before this one is written
        await asyncio.Event().wait()
    return [*memory.done, ctx.trigger]


traced_five = Agent(
    name="traced_five",
    memory=Progress,
    initial="s0",
    final=[f"s{STEPS}"],
    lease_ttl=2.0,
    transitions=[
        tool(f"t{i}", f"s{i}", f"s{i + 1}", step, into="done", retries=2, backoff=0)
        for i in range(STEPS)
    ],
)


async def main(url: str, prefix: str, run_id: str, spans: str, mode: str) -> None:
    install(JsonLinesExporter(spans))
    store = open_store(url, prefix=prefix)
    if mode == "start":
        run = await traced_five.start(store, Progress(), run_id=run_id)
        await run.until_done()
    elif mode == "resume":
        run = await traced_five.resume(store, run_id)
        await run.until_done()
    else:
        assert isinstance(store, RedisStore)
        await traced_five.enqueue(store, run_id)

        def stop_when_done(run: object, event: object) -> None:
            if getattr(run, "status", None) == "done":
                worker.stop()

        worker = Worker(store, [traced_five], concurrency=1, on_event=stop_when_done)
        await worker.run()
    await store.close()
    print("done", flush=True)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:6]))
