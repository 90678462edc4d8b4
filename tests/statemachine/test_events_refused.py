"""An event that would break a waiting run is refused before anything is written; the run
waits on. (Before: the error was committed and the waiting run failed: anyone who could send
an event could kill a run.)"""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from agents import Agent, tool, wait
from statemachine.engine import Action, check
from statemachine.errors import InvalidPayload, MemoryTooLarge
from storage import Store


class Inbox(BaseModel):
    note: str = ""


inbox = Agent(
    name="inbox", memory=Inbox, initial="new", final=["done"], on_error="failed",
    max_memory=1_000,
    transitions=[
        tool("open", "new", "asked", lambda m: "open", into="note"),
        wait("reply", "asked", "done", payload=str, into="note"),
    ],
)  # fmt: skip


async def test_a_reply_over_max_memory_is_refused_and_the_run_waits_on(store: Store) -> None:
    run = await inbox.run(store, Inbox(), run_id="r1")
    assert run.status == "waiting"
    before = (await store.load("r1"), await store.history("r1"))
    with pytest.raises(MemoryTooLarge, match="over the limit of 1000; nothing was written"):
        await run.send("reply", "x" * 2_000)
    assert (await store.load("r1"), await store.history("r1")) == before
    again = await inbox.resume(store, "r1")
    assert again.status == "waiting"
    await again.send("reply", "ok")  # a good reply still goes through
    await again.until_done()
    assert (again.status, again.memory.note) == ("done", "ok")


async def test_a_payload_no_store_would_keep_is_refused_naming_it(store: Store) -> None:
    run = await inbox.run(store, Inbox(), run_id="r2")
    before = await store.history("r2")
    with pytest.raises(InvalidPayload, match=r"lone surrogate.*nothing was written"):
        await run.send("reply", "\ud800")
    assert await store.history("r2") == before
    assert (await inbox.resume(store, "r2")).status == "waiting"


async def test_a_fork_over_max_memory_is_refused_as_a_start_is(store: Store) -> None:
    run = await inbox.run(store, Inbox(), run_id="r3")
    big = {"note": "x" * 2_000}
    with pytest.raises(MemoryTooLarge, match="over the limit of 1000"):
        fork = Action(name="fork", at=1, new_run_id="big", memory_update=big)
        await check(inbox, store, "r3", fork)
    with pytest.raises(MemoryTooLarge, match="over the limit of 1000"):
        await inbox.fork(store, "r3", 1, new_run_id="big", memory_update=big)
    assert await store.load("big") is None
    forked = await inbox.fork(store, run.run_id, 1, new_run_id="small", memory_update={"note": "y"})
    assert (forked.state, forked.memory.note) == ("asked", "y")
