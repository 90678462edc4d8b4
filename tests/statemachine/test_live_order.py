"""A step's live items keep their order on the channel when the sender is still publishing
what the step emitted earlier as the step's commit takes the rest: the commit waits for that
publish (its items then land after), so no step needs to drain before it returns."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, JsonValue

from agents import Agent, tool
from statemachine import StepContext
from storage import Store
from storage.base import live_order


class Memory(BaseModel):
    done: bool = False


class HeldPublishes:
    """`store`, whose publishes wait until `release` is set (a slow round trip)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.publishing = asyncio.Event()
        self.release = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    async def publish(self, run_id: str, entries: Sequence[tuple[int, JsonValue]]) -> None:
        self.publishing.set()
        await self.release.wait()
        await self.store.publish(run_id, entries)


async def test_a_commit_lands_its_items_after_a_publish_in_flight(store: Store) -> None:
    held = HeldPublishes(store)

    async def talk(m: Memory, ctx: StepContext) -> bool:
        ctx.live.emit("progress", n=1)
        await held.publishing.wait()  # the sender publishes n=1 (its window passed)
        ctx.live.emit("progress", n=2)  # queued: the commit takes it
        return True

    async def let_go() -> None:
        await held.publishing.wait()
        await asyncio.sleep(0.05)  # the step has returned, its commit is waiting
        held.release.set()

    agent = Agent(
        name="talker", memory=Memory, initial="a", final=["z"],
        transitions=[tool("talk", "a", "z", talk, into="done")],
    )  # fmt: skip
    releasing = asyncio.create_task(let_go())
    run = await agent.run(held, Memory(), run_id="t1")
    await releasing
    assert run.status == "done"
    entries = sorted(await store.live("t1"), key=lambda e: live_order(e.id))
    said = [e.item["n"] for e in entries if e.item["kind"] == "progress"]
    assert said == [1, 2]
