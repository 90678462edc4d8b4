"""A process that drives runs `r` and `h` three steps each and exits, after a SAVE taken
at step 1 (what a Redis without AOF keeps through a restart); prints "RUN SEQ KEY" for each
commit it was told of.

    python -m tests.faults.rollback_child REDIS_URL
"""

from __future__ import annotations

import asyncio
import sys

import redis
from pydantic import BaseModel

from agents import Agent, tool
from statemachine import StepContext
from storage import open_store


class Count(BaseModel):
    n: int = 0


def make_agent(keys: list[str]) -> Agent[Count]:
    def bump(memory: Count, ctx: StepContext) -> int:
        keys.append(ctx.idempotency_key)
        return memory.n + 1

    states = ["s0", "s1", "s2", "s3", "s4"]
    return Agent(
        name="lossy", memory=Count, initial="s0", final=["s4"],
        transitions=[tool(f"t{i}", states[i], states[i + 1], bump, into="n") for i in range(4)],
    )  # fmt: skip


async def main(url: str) -> None:
    store = open_store(url, prefix="later")
    runs = [await make_agent([]).start(store, Count(), run_id=i) for i in ("r", "h")]
    for step in range(3):
        for run in runs:
            event = await run.step()
            assert event is not None
            print(run.run_id, event.seq, event.key, flush=True)
        if step == 0:
            redis.Redis.from_url(url).save()
    for run in runs:
        await run.release()
    await store.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
