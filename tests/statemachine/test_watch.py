"""`Run.watch` in one process: failed tries, parking, `follow` across a resume, and runs that
are not there."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import BaseModel

from agents import Agent, tool, wait
from statemachine import RunNotFound
from statemachine.engine import WatchItem, watch
from storage import Store


class Memory(BaseModel):
    n: int = 0
    tries: int = 0


def make_agent() -> Agent[Memory]:
    flaky_calls = 0

    def flaky(m: Memory) -> int:
        nonlocal flaky_calls
        flaky_calls += 1
        if flaky_calls == 1:
            raise ConnectionError("blip")
        return m.n + 1

    return Agent(
        name="watched", memory=Memory, initial="a", final=["z"],
        transitions=[
            tool("flaky", "a", "b", flaky, into="n", retries=1, backoff=0.0),
            wait("go", "b", "c"),
            tool("last", "c", "z", lambda m: m.n + 1, into="n"),
        ],
    )  # fmt: skip


def kinds(items: list[WatchItem]) -> list[tuple[str, int, int]]:
    return [(i.kind, i.seq, i.attempt) for i in items]


async def test_a_watch_shows_tries_ends_when_parked_and_follows_across_a_resume(
    store: Store,
) -> None:
    agent = make_agent()
    run = await agent.start(store, Memory(), run_id="w1")
    follower = asyncio.create_task(_collect(run.watch(follow=True)))
    await run.until_done()
    assert run.status == "waiting"
    parked = [i async for i in run.watch()]  # without follow: ends at the parked commit
    assert kinds(parked) == [
        ("committed", 0, 1),
        ("started", 1, 1), ("failed", 1, 1), ("started", 1, 2),
        ("committed", 1, 2),  # its commit parks the run: it waits for "go"
    ]  # fmt: skip
    assert parked[2].data["retrying"] is True and parked[2].data["error"] == {
        "type": "ConnectionError", "message": "blip",
    }  # fmt: skip
    assert parked[-1].event is not None and parked[-1].event.status == "waiting"

    resumed = await agent.resume(store, "w1")
    await resumed.send("go")
    await resumed.until_done()
    followed = await asyncio.wait_for(follower, 60)
    committed = [i.event.trigger for i in followed if i.event is not None]
    assert committed == ["start", "flaky", "go", "last"]  # across the park, until done
    assert [i.kind for i in followed].count("stopped") >= 1  # the park, shown with follow
    tail = [i async for i in watch(store, "w1", after=parked[-1].offset)]
    assert [i.event.trigger for i in tail if i.event is not None] == ["go", "last"]


async def _collect(items: object) -> list[WatchItem]:
    return [i async for i in items]  # type: ignore[attr-defined]


async def test_watching_a_run_that_is_not_there(store: Store) -> None:
    with pytest.raises(RunNotFound):
        [i async for i in watch(store, "nobody")]
    with pytest.raises(ValueError, match="not a watch offset"):
        [i async for i in watch(store, "nobody", after="x:y")]


async def test_a_slow_step_is_seen_started_before_its_commit(store: Store) -> None:
    """Quick steps' live items go with their commits; a step still running after the batch
    window has its "started" item published on its own, so a watcher sees it running."""
    release = asyncio.Event()

    async def slow(m: Memory) -> int:
        await release.wait()
        return m.n + 1

    agent = Agent(
        name="slow_watched", memory=Memory, initial="a", final=["z"],
        transitions=[
            tool("quick", "a", "b", lambda m: m.n + 1, into="n"),
            tool("slow", "b", "z", slow, into="n"),
        ],
    )  # fmt: skip
    run = await agent.start(store, Memory(), run_id="slow-1", hold=True)
    driving = asyncio.create_task(run.until_done())
    seen: list[WatchItem] = []
    async with asyncio.timeout(60):  # a loose bound: the item comes after ~20 ms
        async for item in run.watch():
            seen.append(item)
            if (item.kind, item.seq) == ("started", 2):
                break
    assert not driving.done() and run.seq == 1  # seen while the step runs, before its commit
    release.set()
    await asyncio.wait_for(driving, 60)
    assert run.status == "done"
    assert [(i.kind, i.seq) for i in seen] == [
        ("committed", 0),
        ("started", 1),
        ("committed", 1),
        ("started", 2),
    ]
