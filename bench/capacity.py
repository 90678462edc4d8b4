"""How many runs one worker process holds at once: runs whose step waits (as a model call or
a slow API would), so that they pile up in flight instead of finishing.

Starts its own redis-server, queues `--runs` runs of an agent whose one step awaits
`--pause` seconds, and drives them with one in-process `statemachine.Worker` of concurrency
`--concurrency`. Samples the runs it holds every 20 ms and prints the peak, the time to drive
them all, and the process's peak memory. Usage, from the repository root:

    python3 bench/capacity.py [--runs 1000] [--concurrency 1000] [--pause 2]
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as `python3 bench/capacity.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pydantic import BaseModel

from agents import Agent, tool
from bench._redis import local_redis
from statemachine import Worker
from storage import RedisStore


class Memory(BaseModel):
    waited: float = 0.0


def slow_agent(pause: float) -> Agent[Memory]:
    async def wait_a_while(memory: Memory) -> float:
        await asyncio.sleep(pause)
        return pause

    return Agent(
        name="slow",
        memory=Memory,
        initial="s0",
        final=["s1"],
        lease_ttl=60,
        transitions=[tool("wait", "s0", "s1", wait_a_while, into="waited")],
    )


async def measure(url: str, runs: int, concurrency: int, pause: float) -> None:
    store = RedisStore.from_url(f"{url}?prefix=capacity&max_connections={concurrency + 100}")
    agent = slow_agent(pause)
    for i in range(runs):
        await agent.submit(store, Memory(), run_id=f"c{i}")
    worker = Worker(store, [agent], concurrency=concurrency, heartbeat=1.0)
    began = time.perf_counter()
    task = asyncio.create_task(worker.run())
    peak = 0
    while worker.driven < runs:
        peak = max(peak, len(worker.holding))
        await asyncio.sleep(0.02)
    elapsed = time.perf_counter() - began
    worker.stop()
    await task
    done = sum(1 for r in await store.list_runs(agent="slow", limit=runs) if r.status == "done")
    await store.close()
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("| runs | concurrency | step pause | peak runs in flight | time | done | peak RSS |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    print(
        f"| {runs:,} | {concurrency:,} | {pause:g} s | {peak:,} | {elapsed:.2f} s | {done:,} |"
        f" {rss_mb:.0f} MB |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=1000)
    parser.add_argument("--pause", type=float, default=2.0, help="seconds each step waits")
    args = parser.parse_args()
    with local_redis() as url:
        asyncio.run(measure(url, args.runs, args.concurrency, args.pause))


if __name__ == "__main__":
    main()
