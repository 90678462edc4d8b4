"""Clear errors where there were tracebacks: a run the store lost mid-run, `run_sync` in a
running loop, a Redis store used from a second event loop, a memory of 4,000 fields."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import BaseModel, create_model

from agents import Agent, tool
from statemachine import RunError, RunNotFound
from storage import EmbeddedStore, RedisStore, Store

from ..redis_server import RedisServer


class Memo(BaseModel):
    n: int = 0


counter = Agent(
    name="counter", memory=Memo, initial="a", final=["done"],
    transitions=[
        tool("one", "a", "b", lambda m: 1, into="n"),
        tool("two", "b", "done", lambda m: 2, into="n"),
    ],
)  # fmt: skip


async def forget(store: Store, run_id: str) -> None:
    """What a Redis restarted without persistence, or a FLUSHALL, does to a run."""
    if isinstance(store, RedisStore):
        await store.client.delete(*(store.key(run_id, p) for p in ("run", "events", "keys")))
    else:
        assert isinstance(store, EmbeddedStore)
        store.connection.execute("DELETE FROM runs WHERE run_id = ?", (run_id,))


async def test_a_run_the_store_lost_mid_run_is_run_not_found_saying_so(store: Store) -> None:
    run = await counter.start(store, Memo(), run_id="lost")
    await run.step()
    await forget(store, "lost")
    with pytest.raises(RunNotFound, match="gone from the store while it ran: the store lost it"):
        await run.step()
    await run.release(quiet=True)


async def test_run_sync_inside_a_running_loop_names_the_async_call(store: Store) -> None:
    with pytest.raises(RunError, match=r"await agent\.run\(store, memory, run_id=\.\.\.\)"):
        counter.run_sync(store, Memo(), run_id="r1")
    assert await store.load("r1") is None


async def test_agent_run_starts_and_drives_in_one_call(store: Store) -> None:
    run = await counter.run(store, Memo(), run_id="r1")
    assert (run.status, run.memory.n) == ("done", 2)


def test_run_sync_drives_a_run_from_a_script(tmp_path: object) -> None:
    store = EmbeddedStore(":memory:")
    assert counter.run_sync(store, Memo(), run_id="r1").status == "done"


@pytest.mark.redis
def test_a_redis_store_works_from_one_event_loop_to_the_next(redis_server: RedisServer) -> None:
    store = RedisStore.from_url(redis_server.url, prefix="loops")
    first = asyncio.run(counter.run(store, Memo(), run_id="first"))
    second = asyncio.run(counter.run(store, Memo(), run_id="second"))  # a new loop
    assert first.status == second.status == "done"
    assert asyncio.run(store.load("first")) is not None
    asyncio.run(store.close())


Wide = create_model("Wide", **{f"f{i}": (int, i) for i in range(4000)})  # type: ignore[call-overload]


async def test_a_memory_of_4000_fields_starts_and_commits(store: Store) -> None:
    def bump(m: BaseModel) -> BaseModel:
        return m.model_copy(update={f"f{i}": -i for i in range(4000)})

    wide: Agent[BaseModel] = Agent(
        name="wide", memory=Wide, initial="a", final=["done"],
        transitions=[tool("bump", "a", "done", bump)],
    )  # fmt: skip
    run = await wide.run(store, Wide(), run_id="w")
    assert run.status == "done"
    stored = await store.load("w")
    assert stored is not None and len(stored.memory) == 4000 and stored.memory["f3999"] == -3999
    assert (await wide.resume(store, "w")).memory == run.memory
