"""`watch` merges the durable history with the live channel: committed events exactly once
and in commit order whatever the channel kept, and a watcher restarted from an offset gets
exactly what followed it. Against every backend (real redis-server included), with the
channel trimmed hard and items published late (after the next commit)."""

from __future__ import annotations

import asyncio
import itertools
import tempfile
from pathlib import Path
from typing import Any

import fakeredis
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from statemachine._watch import offset_key
from statemachine.engine import WatchItem, watch
from storage import EmbeddedStore, Event, RedisStore, RunRecord, Store, open_store

from ..redis_server import RedisServer

_ids = itertools.count()
KINDS = ["memory", "embedded", "fakeredis", "redis"]
# An op: commit the next event, or publish an item `lag` commits late (0: on time).
OPS = st.lists(st.one_of(st.just("commit"), st.integers(0, 2)), max_size=40)


def make(kind: str, server: RedisServer | None, folder: Path) -> Store:
    store: Any
    if kind == "memory":
        store = open_store("memory://")
    elif kind == "embedded":
        store = EmbeddedStore(folder / f"s{next(_ids)}.db")
    elif kind == "fakeredis":
        store = RedisStore(fakeredis.aioredis.FakeRedis(decode_responses=True))
    else:
        assert server is not None
        store = RedisStore.from_url(server.url, prefix=f"w{next(_ids)}")
    store.live_maxlen = 5  # trimmed hard: most live items are gone by the end
    return store  # type: ignore[no-any-return]


async def play(store: Store, ops: list[str | int], run_id: str) -> int:
    """Apply `ops` to a new run, ending it done; its last seq."""
    now = 1.0
    await store.create(RunRecord(
        run_id=run_id, agent="a", version=1, state="s0", seq=0, status="running", memory={},
        created_at=now, updated_at=now, nonce="n",
    ))  # fmt: skip
    lease = await store.acquire_lease(run_id, "me", 60)
    assert not isinstance(lease, type(None)) and hasattr(lease, "token")
    seq = 0

    async def commit(status: str) -> None:
        nonlocal seq
        event = Event(seq=seq + 1, trigger="t", kind="move", source=f"s{seq}",
                      dest=f"s{seq + 1}", status=status, key=f"k{seq + 1}")  # type: ignore[arg-type]  # fmt: skip
        assert await store.commit(run_id, expected_seq=seq, token=lease.token, event=event)
        seq += 1
        await store.publish(run_id, [(seq, {"kind": "committed", "seq": seq})])  # as the runner
        await asyncio.sleep(0)  # let a watcher run

    for op in ops:
        if op == "commit":
            await commit("running")
        else:
            assert isinstance(op, int)
            base = max(seq - op, 0)
            await store.publish(run_id, [(base, {"kind": "text", "seq": base + 1, "text": "x"})])
            await asyncio.sleep(0)
    await commit("done")
    return seq


async def collect(store: Store, run_id: str, after: str | None = None) -> list[WatchItem]:
    return [item async for item in watch(store, run_id, after=after)]


def check_order(items: list[WatchItem], last: int) -> None:
    keys = [offset_key(i.offset) for i in items]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)
    assert [i.seq for i in items if i.kind == "committed"] == list(range(last + 1))


async def scenario(store: Store, ops: list[str | int], stop_at: int) -> None:
    run_id = f"r{next(_ids)}"
    first: list[WatchItem] = []

    async def live_watcher() -> None:  # stops after `stop_at` items, then restarts there
        while (await store.load(run_id)) is None:  # noqa: ASYNC110 (another task creates it)
            await asyncio.sleep(0)
        async for item in watch(store, run_id):
            first.append(item)
            if len(first) >= stop_at:
                break
        after = first[-1].offset if first else None
        first.extend(await collect(store, run_id, after))

    watcher = asyncio.create_task(live_watcher())
    last = await play(store, ops, run_id)
    await asyncio.wait_for(watcher, 60)
    check_order(first, last)  # live, across a restart: every commit once, in order

    full = await collect(store, run_id)  # afterwards: every commit, and what the channel kept
    check_order(full, last)
    kept = await store.live(run_id)
    assert len(kept) <= 5 + 100  # trimmed (Redis trims whole stream nodes: about)
    assert [i.offset for i in full if i.kind != "committed"] == sorted(
        (f"{e.base}:{e.id}" for e in kept if e.item["kind"] != "committed"),
        key=offset_key,
    )
    assert {i.offset for i in first} - {i.offset for i in full} <= {
        i.offset for i in first if i.kind != "committed"
    }  # the live watcher saw no commit the history lacks
    for n, item in enumerate(full):  # a watcher restarted anywhere gets exactly the rest
        assert [i.offset for i in await collect(store, run_id, item.offset)] == [
            i.offset for i in full[n + 1 :]
        ]


@pytest.mark.parametrize("kind", KINDS)
def test_committed_events_once_and_in_order_whatever_the_channel_kept(
    kind: str, request: pytest.FixtureRequest
) -> None:
    server = request.getfixturevalue("redis_server") if kind == "redis" else None
    folder = Path(tempfile.mkdtemp())

    @settings(deadline=None, max_examples=25 if kind == "redis" else 40,
              suppress_health_check=[HealthCheck.too_slow])  # fmt: skip
    @given(ops=OPS, stop_at=st.integers(0, 30))
    def check(ops: list[str | int], stop_at: int) -> None:
        async def main() -> None:
            store = make(kind, server, folder)
            try:
                await scenario(store, ops, stop_at)
            finally:
                await store.close()

        asyncio.run(main())

    check()


async def test_a_trimmed_channel_still_yields_every_commit(redis_server: RedisServer) -> None:
    """Hundreds of items on a real server with MAXLEN ~ 5: Redis does trim."""
    store = make("redis", redis_server, Path(tempfile.mkdtemp()))
    try:
        ops: list[str | int] = ["commit" if n % 50 == 0 else 0 for n in range(600)]
        run_id = f"r{next(_ids)}"
        last = await play(store, ops, run_id)
        kept = await store.live(run_id)
        assert len(kept) < 300
        full = await collect(store, run_id)
        check_order(full, last)
    finally:
        await store.close()
