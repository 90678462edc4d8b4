"""The live channel of the Store contract (`publish`, `live`), on every backend."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from pydantic import JsonValue

from storage import EmbeddedStore, Lease, RedisStore, Store
from storage.base import LIVE_TTL, live_order

from ..conftest import STORE_KINDS, make_store
from .conformance.test_runs import new_run


@pytest_asyncio.fixture(params=[*STORE_KINDS, "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """Each backend in turn, Postgres too (its waiting reader LISTENs)."""
    s = await make_store(request.param, request, tmp_path)
    yield s
    await s.close()


async def test_published_items_read_back_in_order_after_an_id(store: Store) -> None:
    await store.create(new_run())
    assert await store.live("run-1") == []
    await store.publish("run-1", [(0, {"kind": "a"}), (0, {"kind": "b"})])
    await store.publish("run-1", [(1, {"kind": "c", "text": "é ✓"})])
    got = await store.live("run-1")
    assert [(e.base, e.item) for e in got] == [
        (0, {"kind": "a"}), (0, {"kind": "b"}), (1, {"kind": "c", "text": "é ✓"}),
    ]  # fmt: skip
    ids = [live_order(e.id) for e in got]
    assert ids == sorted(ids) and len(set(ids)) == 3
    assert [e.item["kind"] for e in await store.live("run-1", got[0].id)] == ["b", "c"]
    assert await store.live("run-1", got[-1].id) == []
    assert [e.item["kind"] for e in await store.live("run-1", limit=1)] == ["a"]
    assert await store.live("no-such-run") == []
    await store.publish("run-1", [])  # nothing to send: nothing happens


async def test_a_waiting_reader_gets_what_is_published_meanwhile(store: Store) -> None:
    await store.create(new_run())
    reader = asyncio.create_task(store.live("run-1", wait=30))
    await asyncio.sleep(0)
    await store.publish("run-1", [(0, {"kind": "text", "text": "hi"})])
    got = await asyncio.wait_for(reader, 60)
    if not got:  # a Redis reader may have been answered before it blocked; it reads on
        got = await store.live("run-1")
    assert [e.item["text"] for e in got] == ["hi"]
    assert await store.live("run-1", got[-1].id, wait=0.05) == []  # waits, then nothing


async def test_the_channel_is_trimmed(store: Store) -> None:
    await store.create(new_run())
    store.live_maxlen = 5  # type: ignore[attr-defined]
    for n in range(300):
        await store.publish("run-1", [(0, {"n": n})])
    got = await store.live("run-1")
    assert len(got) < 300 and got[-1].item == {"n": 299}  # Redis: about (whole nodes)


async def test_the_redis_channel_shares_the_runs_slot_and_expires(
    redis_store: RedisStore,
) -> None:
    await redis_store.create(new_run())
    await redis_store.publish("run-1", [(0, {"kind": "a"})])
    key = redis_store.key("run-1", "live")
    assert key == f"{redis_store.prefix}:{{run-1}}:live"
    ttl = await redis_store.client.pttl(key)
    assert 0 < ttl <= LIVE_TTL * 1000


async def test_embedded_gc_prunes_old_items_of_every_run(tmp_path: Path) -> None:
    """(Redis expires a channel by its TTL.)"""
    store = EmbeddedStore(tmp_path / "store.db")
    await store.create(new_run())
    await store.publish("run-1", [(0, {"kind": "a"})])
    await store.gc(1e12)  # far in the future: every item is past its TTL
    assert await store.live("run-1") == []
    await store.close()


async def test_start_appends_its_live_items_only_when_it_creates_the_run(store: Store) -> None:
    item: JsonValue = {"kind": "started", "seq": 1, "attempt": 1}
    run, lease = await store.start(new_run(), owner="w1", ttl=10, live=[(0, item)])
    assert isinstance(lease, Lease) and run.seq == 0
    assert [(e.base, e.item) for e in await store.live("run-1")] == [(0, item)]
    await store.release_lease(lease)
    again, lease = await store.start(new_run(), owner="w2", ttl=10, live=[(0, {"kind": "x"})])
    assert isinstance(lease, Lease) and again.seq == 0  # found stored: nothing appended
    assert [(e.base, e.item) for e in await store.live("run-1")] == [(0, item)]
    _, other = await store.start(new_run("run-2"), owner="w1", ttl=10, live=[(0, float("nan"))])
    assert isinstance(other, Lease) and await store.live("run-2") == []  # dropped, not failed
