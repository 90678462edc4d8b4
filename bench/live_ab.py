"""What carrying a step's live items in its commit costs per step (issue 30): A/B in one
process, on a private redis-server (or `--url`), runs of `--steps` async no-op tool steps,
interleaved `--rounds` times: the live items riding the commits (as the runner does) against
a run whose commits carry none (`LiveHook.before_commit` patched in this process to drop
them). Prints the median over rounds of each run's median gap between step bodies.

    python3 bench/live_ab.py [--steps 1000] [--rounds 8] [--url redis://127.0.0.1:PORT]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python3 bench/live_ab.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pydantic import BaseModel

from agents import Agent, tool
from bench._redis import redis_for
from statemachine import _hooks
from storage import Event, RedisStore

STAMPS: list[int] = []
POINT = "before_commit"
"""The hook point patched (a name: the runner looks it up on the class)."""


class Memory(BaseModel):
    note: str = ""


async def body(m: Memory) -> None:
    STAMPS.append(time.perf_counter_ns())


def drop_items(self: _hooks.LiveHook, memory: BaseModel, event: Event) -> dict[str, Any]:
    self.live.take()
    return {}


async def measure(url: str, steps: int, rounds: int) -> dict[str, list[float]]:
    agent = Agent(
        name="live_ab", memory=Memory, initial="s0", final=f"s{steps}", lease_ttl=60,
        transitions=[tool(f"t{i}", f"s{i}", f"s{i + 1}", body) for i in range(steps)],
    )  # fmt: skip
    riding = _hooks.LiveHook.before_commit
    store = RedisStore.from_url(url, prefix=f"liveab{time.time_ns()}")
    gaps: dict[str, list[float]] = {"riding": [], "none": []}
    try:
        for _ in range(rounds):
            for mode in gaps:
                setattr(_hooks.LiveHook, POINT, riding if mode == "riding" else drop_items)
                STAMPS.clear()
                await agent.run(store, Memory())
                gaps[mode].append(statistics.median(b - a for a, b in itertools.pairwise(STAMPS)))
    finally:
        setattr(_hooks.LiveHook, POINT, riding)
        await store.close()
    return gaps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--url")
    args = parser.parse_args()
    with redis_for(args.url, parser) as (url, _):
        gaps = asyncio.run(measure(url, args.steps, args.rounds))
        for mode, got in gaps.items():
            each = ", ".join(f"{g / 1000:.0f}" for g in got)
            print(f"{mode:>7}: median p50 {statistics.median(got) / 1000:.1f} µs ({each})")


if __name__ == "__main__":
    main()
