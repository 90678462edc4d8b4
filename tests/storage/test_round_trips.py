"""Round trips of a run's life on a real redis-server, counted on the wire.

The numbers are what the code does today, asserted exactly: a change that saves a round trip
updates its constant here on purpose (issue 17's targets: start 1, each step 1, the final
step 1 with the release inside it).
"""

from __future__ import annotations

import itertools

from pydantic import BaseModel

from agents import Agent, tool
from storage import RedisStore

from ..redis_server import RedisServer
from .roundtrips import count_round_trips

START = 2
"""`agent.start`: create.lua, then the run's index entries (one pipeline)."""
FIRST_STEP = 2
"""The first step: lease.lua (acquire, which says the seq: no reload), then commit.lua."""
STEP = 1
"""A step that does not end the run: commit.lua alone."""
FINAL_STEP = 2
"""The step into a final state: commit.lua, then moving the run between status indexes."""
RELEASE = 1
"""Giving the lease back: lease.lua (release)."""

_ids = itertools.count()


class Memory(BaseModel):
    note: str = ""


async def nothing(m: Memory) -> None:
    return None


three_steps = Agent(
    name="counted", memory=Memory, initial="s0", final="s3", lease_ttl=60,
    transitions=[tool(f"t{i}", f"s{i}", f"s{i + 1}", nothing) for i in range(3)],
)  # fmt: skip


async def test_a_run_costs_the_round_trips_counted_here(redis_server: RedisServer) -> None:
    store = RedisStore.from_url(redis_server.url, prefix=f"rt{next(_ids)}")
    wire = count_round_trips(store)
    try:
        await (await three_steps.start(store, Memory())).until_done()  # loads the scripts
        wire.take()
        run = await three_steps.start(store, Memory())
        counted = {"start": wire.take()}
        await run.step()
        counted["first step"] = wire.take()
        await run.step()
        counted["step"] = wire.take()
        await run.step()
        counted["final step"] = wire.take()
        assert run.status == "done"
        await run.release()
        counted["release"] = wire.take()
    finally:
        await store.close()
    assert counted == {
        "start": START,
        "first step": FIRST_STEP,
        "step": STEP,
        "final step": FINAL_STEP,
        "release": RELEASE,
    }
