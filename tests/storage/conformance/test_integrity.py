"""Integrity before progress, on every backend: a run whose stored history lost events or
idempotency records (evicted by `maxmemory-policy allkeys-lru`, rolled back, deleted) is
refused by `load`, naming what is missing and how to restore it; it is never resumed."""

from __future__ import annotations

import pytest

from storage import EmbeddedStore, RedisStore, Store
from storage.errors import HistoryLost
from storage.postgres import PostgresStore

from ...postgres_server import execute
from .test_runs import event, leased, new_run


async def lose(store: Store, run_id: str, part: str) -> None:
    """Lose the run's `part` ("events" or "keys") as an eviction would."""
    if isinstance(store, RedisStore):
        await store.client.delete(store.key(run_id, part))
    elif isinstance(store, PostgresStore):  # each event row holds its key: both go at once
        await execute(store, "DELETE FROM {s}.events WHERE run_id = $1", run_id)
    else:
        assert isinstance(store, EmbeddedStore)
        store.connection.execute(f"DELETE FROM {part} WHERE run_id = ?", (run_id,))


async def committed_twice(store: Store) -> None:
    await store.create(new_run())
    lease = await leased(store)
    await store.commit("run-1", expected_seq=0, token=lease.token, event=event(1))
    await store.commit("run-1", expected_seq=1, token=lease.token, event=event(2))


@pytest.mark.parametrize("part", ["events", "keys"])
async def test_a_run_whose_history_was_lost_is_refused_naming_it(store: Store, part: str) -> None:
    await committed_twice(store)
    assert (await store.load("run-1")) is not None
    await lose(store, "run-1", part)
    with pytest.raises(HistoryLost) as lost:
        await store.load("run-1")
    message = str(lost.value)
    assert "run 'run-1'" in message and "agentfsm import" in message
    assert ("events" in lost.value.missing) if part == "events" else ("keys" in message)


async def test_a_run_that_lost_its_last_events_is_refused(store: Store) -> None:
    await committed_twice(store)
    if isinstance(store, RedisStore):
        await store.client.xdel(store.key("run-1", "events"), "1-0", "2-0")  # seq 0 kept
    elif isinstance(store, PostgresStore):
        await execute(store, "DELETE FROM {s}.events WHERE run_id = 'run-1' AND seq > 0")
    else:
        assert isinstance(store, EmbeddedStore)
        store.connection.execute("DELETE FROM events WHERE run_id = 'run-1' AND seq > 0")
    with pytest.raises(HistoryLost, match=r"not 2-0|seqs 0\.\.2, it holds up to seq 0"):
        await store.load("run-1")


async def test_a_run_that_lost_its_keys_is_not_resumed(store: Store) -> None:
    """As under `allkeys-lru`: the keys of its committed steps are gone, so resuming could run
    them again; `resume` refuses instead."""
    from pydantic import BaseModel

    from agents import Agent, tool

    class Count(BaseModel):
        n: int = 0

    counter = Agent(
        name="counter", memory=Count, initial="a", final=["d"],
        transitions=[tool(t, s, d, lambda m: m.n + 1, into="n")
                     for t, s, d in (("one", "a", "b"), ("two", "b", "c"), ("three", "c", "d"))],
    )  # fmt: skip
    run = await counter.start(store, Count(), run_id="counted")
    await run.step()
    await run.step()
    await run.release()
    await lose(store, "counted", "keys")
    with pytest.raises(HistoryLost, match="idempotency keys"):
        await counter.resume(store, "counted")
