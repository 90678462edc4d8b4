"""Raising a budget is one engine operation that hands the runs it sends on to whatever drives
runs: with workers serving the agent, they are queued and the workers finish them (none is
left `running` with no holder)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest_asyncio
from pydantic import BaseModel
from pydantic_ai.models.test import TestModel

from agents import Agent, Budget, llm
from statemachine import Worker
from statemachine._operations import workers_serve
from storage import RedisStore

from ..redis_server import RedisServer


class Note(BaseModel):
    tenant: str = "acme"
    a: str = ""
    b: str = ""


agent = Agent(
    name="raised", memory=Note, model=TestModel(custom_output_text="x"), initial="new",
    final=["done"], scope_budget=Budget(requests=1), budget_scope=lambda m: m.tenant,
    transitions=[
        llm("one", "new", "half", prompt="p", into="a", history=False),
        llm("two", "half", "done", prompt="p", into="b", history=False),
    ],
)  # fmt: skip


@pytest_asyncio.fixture
async def store(redis_server: RedisServer, prefix: str) -> AsyncIterator[RedisStore]:
    s = RedisStore.from_url(redis_server.url, prefix=prefix)
    yield s
    await s.close()


async def test_a_raise_queues_the_parked_runs_for_the_workers(store: RedisStore) -> None:
    runs = [await agent.run(store, Note(), run_id=f"r{i}") for i in range(3)]
    assert [r.status for r in runs] == ["waiting"] * 3  # r0 paid 1 request, then all parked
    worker = Worker(store, [agent], heartbeat=0.2, poll=0.05)
    task = asyncio.create_task(worker.run())
    try:
        give_up = time.monotonic() + 10
        while not await workers_serve(store, "raised"):  # its first heartbeat
            assert time.monotonic() < give_up, "the worker never said it serves 'raised'"
            await asyncio.sleep(0.02)
        moved = await agent.raise_budget(store, scope="acme", limits=Budget(requests=100))
        assert sorted(d.run_id for d in moved) == ["r0", "r1", "r2"]
        assert {d.then for d in moved} == {"queued for the workers"}
        give_up = time.monotonic() + 20
        while [r.status if (r := await store.load(f"r{i}")) else "" for i in range(3)] != [
            "done"
        ] * 3:
            assert time.monotonic() < give_up, "the workers did not finish the raised runs"
            await asyncio.sleep(0.05)
    finally:
        worker.stop()
        await task
