"""Round trips of a run's life on a real redis-server, counted on the wire.

The numbers are what the code does, asserted exactly: a change that saves a round trip
updates its constant here on purpose. Issue 17's targets: start 1 (the lease taken with
the run), each step 1, the final step 1 with the release and the index upkeep inside it;
the first step under a lease adds its stored "started" item, so a K-step run costs K + 2
round trips; `agent.run`, which runs the first step right after the start, has the start store
that item with the run: K + 1. The live channel's items of quick steps ride the commits (issue
30): no publish of their own.
"""

from __future__ import annotations

import itertools
import time
from typing import Any

from pydantic import BaseModel
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.usage import RequestUsage

from agents import Agent, Budget, llm, tool
from agents.spending._budget import period_of
from storage import RedisStore

from ..redis_server import RedisServer
from .roundtrips import count_round_trips

START = 1
"""`agent.start(hold=True)`: create.lua, which indexes the run and takes its lease too."""
FIRST_STEP = 2
"""The first step of a held run: its "started" live item, stored before the step runs (crash
accounting tells a death in the step from one before it by it), then commit.lua."""
STEP = 1
"""A step that does not end the run: commit.lua alone."""
FINAL_STEP = 1
"""The step into a final state: commit.lua, which moves the run between the status indexes
and gives the lease back."""
RELEASE = 0
"""Giving the lease back: nothing left to do, the final commit did it."""
AGENT_RUN_FIRST_STEP = 1
"""The first step of `agent.run`: commit.lua alone (its "started" went with the start)."""
UNHELD_START = 1
"""`agent.start()` (no lease): create.lua with the index entries."""
UNHELD_FIRST_STEP = 3
"""The first step of a run started unheld: lease.lua (acquire, which says the seq: no
reload), the step's "started" live item (see `FIRST_STEP`), then commit.lua."""

SCOPE_CHECK = 1
"""What a scope budget adds to each model request: its reservation (`Ledger.reserve`:
reserve.lua, which reads the scope's totals, the requests in flight and the limits people set,
and holds the request); the charge, which drops the reservation, is made by commit.lua itself,
in the step's one commit."""

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
        run = await three_steps.start(store, Memory(), hold=True)
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


async def test_a_run_of_quick_steps_sends_its_live_items_with_its_commits(
    redis_server: RedisServer,
) -> None:
    store = RedisStore.from_url(redis_server.url, prefix=f"rt{next(_ids)}")
    wire = count_round_trips(store)
    try:
        await (await three_steps.start(store, Memory())).until_done()  # loads the scripts
        run = await three_steps.start(store, Memory(), hold=True)
        wire.take()
        await run.until_done()
        await run.live.drain()  # whatever was left for a publish of its own is sent now
        trips = wire.take()
        items = [e.item for e in await store.live(run.run_id)]
    finally:
        await store.close()
    assert trips == FIRST_STEP + STEP + FINAL_STEP + RELEASE  # no publish beside them
    # The first step's "started" is stored before it runs (its commit then carries only a
    # notice); each later commit carries its step's "started"; the last says it stopped.
    assert [(i["kind"], i["seq"]) for i in items] == [
        ("started", 1), ("committed", 1), ("started", 2), ("started", 3), ("stopped", 3),
    ]  # fmt: skip


async def test_agent_run_stores_its_first_started_item_with_the_start(
    redis_server: RedisServer,
) -> None:
    store = RedisStore.from_url(redis_server.url, prefix=f"rt{next(_ids)}")
    wire = count_round_trips(store)
    try:
        await three_steps.run(store, Memory())  # loads the scripts
        wire.take()
        run = await three_steps.run(store, Memory())
        trips = wire.take()
        items = [e.item for e in await store.live(run.run_id)]
        again = await three_steps.run(store, Memory(), run_id=run.run_id)  # done: runs nothing
        assert again.status == "done" and len(await store.live(run.run_id)) == len(items)
    finally:
        await store.close()
    assert trips == START + AGENT_RUN_FIRST_STEP + STEP + FINAL_STEP + RELEASE
    assert [(i["kind"], i["seq"]) for i in items] == [
        ("started", 1), ("committed", 1), ("started", 2), ("started", 3), ("stopped", 3),
    ]  # fmt: skip


async def test_a_run_started_unheld_takes_its_lease_with_the_first_step(
    redis_server: RedisServer,
) -> None:
    store = RedisStore.from_url(redis_server.url, prefix=f"rt{next(_ids)}")
    wire = count_round_trips(store)
    try:
        await (await three_steps.start(store, Memory())).until_done()  # loads the scripts
        wire.take()
        run = await three_steps.start(store, Memory())
        counted = {"start": wire.take()}
        await run.step()
        counted["first step"] = wire.take()
        await run.until_done()
    finally:
        await store.close()
    assert counted == {"start": UNHELD_START, "first step": UNHELD_FIRST_STEP}


async def reply(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    usage = RequestUsage(input_tokens=5, output_tokens=2)
    return ModelResponse(parts=[TextPart("ok")], usage=usage)


def model_steps(name: str, **budget: Any) -> Agent[Memory]:
    return Agent(
        name=name, memory=Memory, model=FunctionModel(reply), initial="s0", final="s2",
        lease_ttl=60, transitions=[llm(f"a{i}", f"s{i}", f"s{i + 1}", prompt="hi", into="note")
                                   for i in range(2)], **budget,
    )  # fmt: skip


async def _model_step_trips(store: RedisStore, agent: Agent[Memory]) -> list[int]:
    wire = count_round_trips(store)
    await (await agent.start(store, Memory())).until_done()  # loads the scripts
    run = await agent.start(store, Memory(), hold=True)
    wire.take()
    counted = []
    for _ in range(2):
        await run.step()
        counted.append(wire.take())
    assert run.status == "done"
    return counted


async def test_a_scope_charge_adds_no_round_trip_to_a_commit(redis_server: RedisServer) -> None:
    scoped = model_steps(
        "scoped_rt", scope_budget=Budget(requests=100, per="day"), budget_scope=lambda m: "rt"
    )
    trips = {}
    for agent in (model_steps("unscoped_rt"), scoped):
        store = RedisStore.from_url(redis_server.url, prefix=f"rt{next(_ids)}")
        try:
            trips[agent.name] = await _model_step_trips(store, agent)
            usage = await store.ledger.scope_usage("rt", period_of("day", time.time()))
        finally:
            await store.close()
    assert trips["scoped_rt"] == [n + SCOPE_CHECK for n in trips["unscoped_rt"]]
    assert usage == {"requests": 4, "input_tokens": 20, "output_tokens": 8}  # both runs'
