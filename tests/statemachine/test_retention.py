"""Retention: a finished run is kept `retention` seconds, then it goes (Redis expires its
keys; `gc` deletes it from the embedded store); failed and waiting runs are kept."""

from __future__ import annotations

import asyncio
import time

import pytest
from pydantic import BaseModel

from agents import Agent, tool
from storage import Event, RedisStore, Store
from storage.errors import StoreUnavailable


class Memo(BaseModel):
    n: int = 0


def agent(retention: float | None) -> Agent[Memo]:
    return Agent(
        name="short_lived", memory=Memo, initial="a", final=["done"], on_error="failed",
        retention=retention,
        transitions=[
            tool("go", "a", "b", lambda m: 1, into="n"),
            tool("end", "b", "done", lambda m: 2 if m.n == 1 else 1 / 0, into="n"),
        ],
    )  # fmt: skip


async def test_a_done_run_goes_after_its_retention_the_others_stay(store: Store) -> None:
    brief = agent(retention=1.0)
    done = await brief.start(store, Memo(), run_id="done")
    await done.until_done()
    ending = (await done.history())[-1]
    assert ending.expires_at == pytest.approx(ending.ended_at + 1.0)
    failing = Agent(
        name="short_lived", memory=Memo, initial="a", final=["done"], on_error="failed",
        retention=1.0, transitions=[tool("go", "a", "done", lambda m: 1 / 0)],
    )  # fmt: skip
    failed = await failing.start(store, Memo(), run_id="failed")
    await failed.until_done()
    assert failed.status == "failed"
    if isinstance(store, RedisStore):
        assert 0 < await store.client.pttl(store.key("done", "run")) <= 1000
        assert await store.client.pttl(store.key("failed", "run")) == -1
        if "fake" in type(store.client).__module__:
            return  # fakeredis's clock does not run on its own
        give_up = time.monotonic() + 60  # the server expires the keys; gc cleans the index
        while await store.client.exists(store.key("done", "run")):
            assert time.monotonic() < give_up, "the server did not expire the run in 60 s"
            await asyncio.sleep(0.05)
        assert await store.gc(time.time()) == 3
    else:
        assert await store.gc(time.time()) == 0  # not yet
        assert await store.gc(time.time() + 1.5) == 1
    assert await store.load("done") is None
    assert await store.load("failed") is not None
    assert [r.run_id for r in await store.list_runs()] == ["failed"]


def test_retention_must_be_positive() -> None:
    with pytest.raises(ValueError, match="retention must be positive seconds"):
        agent(retention=0)


async def test_the_expiry_is_set_by_the_final_commit_itself(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connection dropped right after the final commit (before any index upkeep) cannot
    leave a finished run kept for good: the commit itself set its expiry."""
    if not isinstance(store, RedisStore):
        pytest.skip("the embedded store writes expires_at in the commit's own transaction")

    async def dropped(store: object, run_id: str, event: Event, *rest: object) -> None:
        if event.status != "running":  # the final commit
            raise StoreUnavailable("the connection dropped after the commit")

    # As on Cluster, where the index upkeep comes beside the commit (on standalone Redis the
    # commit script keeps the indexes itself: nothing comes after it).
    monkeypatch.setattr(store, "_indexes", [])
    monkeypatch.setattr("storage.redis._indexes.after_commit", dropped)
    run = await agent(retention=3600.0).start(store, Memo(), run_id="kept")
    with pytest.raises(StoreUnavailable):
        await run.until_done()
    for part in ("run", "events", "keys"):
        assert 0 < await store.client.pttl(store.key("kept", part)) <= 3600 * 1000
    record = await store.load("kept")
    assert record is not None and record.status == "done"
    assert record.expires_at == pytest.approx(record.updated_at + 3600.0)
