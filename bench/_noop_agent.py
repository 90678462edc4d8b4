"""The agent `bench/throughput.py` drives: STEPS no-op async tool steps, s0 -> s1 -> ... -> sN.

Module-level, so worker processes import it by name (`bench._noop_agent:noop`, with the
repository root on PYTHONPATH). `$AGENTFSM_BENCH_STEPS` sets the number of steps (default 5);
the benchmark sets it the same in every process.
"""

from __future__ import annotations

import os

from pydantic import BaseModel

from agents import Agent, tool

STEPS = int(os.environ.get("AGENTFSM_BENCH_STEPS", "5"))
LEASE_TTL = 60.0
"""Seconds; renewals (every ttl/3 = 20 s) never fall inside a run this short."""


class Memory(BaseModel):
    note: str = ""


async def nothing(m: Memory) -> None:
    return None


noop = Agent(
    name="noop",
    memory=Memory,
    initial="s0",
    final=f"s{STEPS}",
    transitions=[tool(f"t{i}", f"s{i}", f"s{i + 1}", nothing) for i in range(STEPS)],
    lease_ttl=LEASE_TTL,
)
