"""What every Store backend guarantees (storage/base.py): runs, events, leases."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sys
import time
from pathlib import Path

import pytest
from pydantic import JsonValue

from storage import (
    Committed,
    Conflict,
    Duplicate,
    Event,
    Lease,
    LeaseHeld,
    LeaseLost,
    RedisStore,
    RunRecord,
    RunStatus,
    Store,
)
from storage.base import live_order
from storage.errors import CorruptData

from ..corrupt import corrupt_last_event, corrupt_memory_field

_ROOT = str(Path(__file__).resolve().parents[3])


def new_run(run_id: str = "run-1", **memory: JsonValue) -> RunRecord:
    t = time.time()
    return RunRecord(
        run_id=run_id,
        agent="tester",
        version=1,
        state="a",
        seq=0,
        status="running",
        memory={"n": 0, "items": [], **memory},
        created_at=t,
        updated_at=t,
    )


def event(seq: int, key: str | None = None, dest: str = "b", **patch: JsonValue) -> Event:
    return Event(
        seq=seq,
        trigger="go",
        kind="tool",
        source="a",
        dest=dest,
        status="running",
        key=key or f"run-1:{seq - 1}:go",
        patch=patch,
        ended_at=time.time(),
    )


async def leased(store: Store, run_id: str = "run-1", owner: str = "w1", ttl: float = 10) -> Lease:
    lease = await store.acquire_lease(run_id, owner, ttl)
    assert isinstance(lease, Lease)
    return lease


async def snapshot(store: Store, run_id: str = "run-1") -> tuple[RunRecord | None, list[Event]]:
    run = await store.load(run_id)
    return (run and _without_holder(run)), await store.history(run_id)


def _without_holder(run: RunRecord) -> RunRecord:
    return run


async def test_create_stores_the_run_at_seq_0_with_a_creation_event(store: Store) -> None:
    created = await store.create(new_run())
    loaded = await store.load("run-1")
    assert loaded is not None
    assert (loaded.seq, loaded.state, loaded.status, loaded.memory) == (
        0,
        "a",
        "running",
        {"n": 0, "items": []},
    )
    assert loaded == created
    [start] = await store.history("run-1")
    assert (start.seq, start.kind, start.dest, start.patch) == (
        0,
        "start",
        "a",
        {"n": 0, "items": []},
    )


async def test_create_again_returns_the_stored_run_unchanged(store: Store) -> None:
    await store.create(new_run())
    lease = await leased(store)
    await store.commit("run-1", expected_seq=0, token=lease.token, event=event(1, n=5))
    again = await store.create(new_run(n=99))
    assert (again.seq, again.memory["n"]) == (1, 5)
    assert len(await store.history("run-1")) == 2


async def test_load_and_history_of_an_unknown_run(store: Store) -> None:
    assert await store.load("nope") is None
    assert await store.history("nope") == []
    with pytest.raises(KeyError):
        await store.acquire_lease("nope", "w1", 1)


async def test_create_refuses_a_run_id_that_cannot_be_a_key(store: Store) -> None:
    with pytest.raises(ValueError, match=r"invalid run id 'a\{b\}'"):
        await store.create(new_run("a{b}"))
    with pytest.raises(ValueError, match="invalid run id ''"):
        await store.create(new_run(""))


async def test_commit_applies_state_status_patch_and_appends_the_event(store: Store) -> None:
    await store.create(new_run())
    lease = await leased(store)
    ev = event(1, n=1, items=["x"])
    assert await store.commit("run-1", expected_seq=0, token=lease.token, event=ev) == Committed(
        seq=1
    )
    run = await store.load("run-1")
    assert run is not None
    assert (run.seq, run.state, run.status, run.memory) == (
        1,
        "b",
        "running",
        {"n": 1, "items": ["x"]},
    )
    history = await store.history("run-1")
    assert [e.seq for e in history] == [0, 1]
    assert history[1] == ev


async def test_patch_touches_only_the_fields_it_names(store: Store) -> None:
    await store.create(new_run(other={"big": "x" * 100}))
    lease = await leased(store)
    await store.commit("run-1", expected_seq=0, token=lease.token, event=event(1, n=7))
    run = await store.load("run-1")
    assert run is not None and run.memory == {"n": 7, "items": [], "other": {"big": "x" * 100}}


async def test_duplicate_key_is_refused_and_writes_nothing(store: Store) -> None:
    await store.create(new_run())
    lease = await leased(store)
    await store.commit("run-1", expected_seq=0, token=lease.token, event=event(1, key="k1", n=1))
    before = await snapshot(store)
    again = await store.commit(
        "run-1", expected_seq=1, token=lease.token, event=event(2, key="k1", n=2)
    )
    assert again == Duplicate(seq=1)
    assert await snapshot(store) == before


async def test_seq_conflict_is_refused_and_writes_nothing(store: Store) -> None:
    await store.create(new_run())
    lease = await leased(store)
    await store.commit("run-1", expected_seq=0, token=lease.token, event=event(1, n=1))
    before = await snapshot(store)
    stale = await store.commit(
        "run-1", expected_seq=0, token=lease.token, event=event(1, key="other", n=9)
    )
    assert stale == Conflict(current_seq=1)
    assert await snapshot(store) == before


async def test_stale_fencing_token_is_refused_and_writes_nothing(store: Store) -> None:
    await store.create(new_run())
    old = await leased(store, owner="w1", ttl=0.05)
    await asyncio.sleep(0.1)  # w1 stalls; its lease runs out
    new = await leased(store, owner="w2")
    assert new.token > old.token
    before = await snapshot(store)
    late = await store.commit("run-1", expected_seq=0, token=old.token, event=event(1, n=1))
    assert late == LeaseLost()
    assert await snapshot(store) == before
    assert await store.commit(
        "run-1", expected_seq=0, token=new.token, event=event(1, n=1)
    ) == Committed(seq=1)


async def test_a_held_lease_names_its_holder(store: Store) -> None:
    await store.create(new_run())
    await leased(store, owner="w1", ttl=10)
    held = await store.acquire_lease("run-1", "w2", 10)
    assert isinstance(held, LeaseHeld)
    assert held.owner == "w1" and 0 < held.expires_in <= 10


async def test_takeover_of_an_unreleased_lease_counts_a_crash(store: Store) -> None:
    await store.create(new_run())
    first = await leased(store, owner="w1", ttl=0.05)
    assert first.crashes == 0
    await asyncio.sleep(0.1)  # w1 died without releasing
    second = await leased(store, owner="w2", ttl=0.05)
    assert second.crashes == 1
    await asyncio.sleep(0.1)
    third = await leased(store, owner="w3")
    assert third.crashes == 2
    run = await store.load("run-1")
    assert run is not None and (run.crashes, run.holder) == (2, "w3")
    await store.commit("run-1", expected_seq=0, token=third.token, event=event(1))
    run = await store.load("run-1")
    assert run is not None and run.crashes == 0


async def test_released_lease_is_not_a_crash(store: Store) -> None:
    await store.create(new_run())
    first = await leased(store, owner="w1")
    await store.release_lease(first)
    second = await leased(store, owner="w2")
    assert second.crashes == 0 and second.token > first.token


async def test_renew_and_release_with_a_stale_token_do_nothing(store: Store) -> None:
    await store.create(new_run())
    old = await leased(store, owner="w1", ttl=0.05)
    assert await store.renew_lease(old)
    await asyncio.sleep(0.1)
    new = await leased(store, owner="w2", ttl=10)
    assert not await store.renew_lease(old)
    await store.release_lease(old)
    held = await store.acquire_lease("run-1", "w3", 10)
    assert isinstance(held, LeaseHeld) and held.owner == "w2"
    assert await store.renew_lease(new)


async def test_renew_keeps_the_lease_past_its_ttl(store: Store) -> None:
    await store.create(new_run())
    lease = await leased(store, owner="w1", ttl=0.6)
    for _ in range(4):  # 0.8 s in all, past the TTL; a busy machine may pause 0.4 s more
        await asyncio.sleep(0.2)
        assert await store.renew_lease(lease)
    held = await store.acquire_lease("run-1", "w2", 1)
    assert isinstance(held, LeaseHeld)


async def test_start_creates_the_run_and_takes_its_lease_at_once(store: Store) -> None:
    run, lease = await store.start(new_run(), owner="w1", ttl=10)
    assert isinstance(lease, Lease) and (lease.owner, lease.crashes, lease.seq) == ("w1", 0, 0)
    assert run.seq == 0 and run.holder == "w1" and run.memory == new_run().memory
    stored = await store.load("run-1")
    assert stored is not None and (stored.seq, stored.holder, stored.status) == (0, "w1", "running")
    assert [e.kind for e in await store.history("run-1")] == ["start"]
    held = await store.acquire_lease("run-1", "w2", 10)
    assert isinstance(held, LeaseHeld) and held.owner == "w1"
    assert await store.commit("run-1", expected_seq=0, token=lease.token, event=event(1))
    assert [r.run_id for r in await store.list_runs(status="running")] == ["run-1"]


async def test_start_of_a_stored_run_returns_it_as_stored_and_leases_it(store: Store) -> None:
    await store.create(new_run())
    first = await leased(store, owner="w1")
    assert await store.commit("run-1", expected_seq=0, token=first.token, event=event(1, n=5))
    again, held = await store.start(new_run(n=99), owner="w2", ttl=10)
    assert isinstance(held, LeaseHeld) and held.owner == "w1"  # refused: w1 holds it
    assert (again.seq, again.memory["n"], again.holder) == (1, 5, "w1")
    await store.release_lease(first)
    again, lease = await store.start(new_run(n=99), owner="w2", ttl=10)
    assert isinstance(lease, Lease) and lease.token > first.token and lease.seq == 1
    assert (again.seq, again.memory["n"], again.holder, lease.crashes) == (1, 5, "w2", 0)
    assert len(await store.history("run-1")) == 2


async def test_start_takes_over_a_lease_whose_holder_is_provably_dead(store: Store) -> None:
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "from storage.process import owner_id; print(owner_id())",
        stdout=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONPATH": _ROOT},
    )  # fmt: skip
    out, _ = await child.communicate()  # it has exited: its owner id is provably dead
    dead = out.decode().strip()
    await store.create(new_run())
    assert isinstance(await store.acquire_lease("run-1", dead, 60), Lease)
    run, lease = await store.start(new_run(), owner="w2", ttl=10)
    assert isinstance(lease, Lease) and lease.crashes == 1 and run.holder == "w2"


async def test_a_commit_that_leaves_the_run_not_running_gives_the_lease_back(
    store: Store,
) -> None:
    await store.create(new_run())
    ends: list[RunStatus] = ["waiting", "waiting", "done"]
    for seq, status in enumerate(ends, start=1):
        lease = await leased(store, owner=f"w{seq}")
        assert lease.crashes == 0  # given back, not died
        e = dataclasses.replace(event(seq), status=status)
        assert await store.commit("run-1", expected_seq=seq - 1, token=lease.token, event=e)
        assert not await store.renew_lease(lease)  # a late renewal takes nothing back
        run = await store.load("run-1")
        assert run is not None and (run.holder, run.status) == ("", status)
        assert [r.run_id for r in await store.list_runs(status=status)] == ["run-1"]
    assert await store.list_runs(status="running") == []


async def test_a_commit_writes_its_live_items_with_it_and_only_when_applied(
    store: Store,
) -> None:
    await store.create(new_run())
    lease = await leased(store)
    await store.publish("run-1", [(0, {"kind": "started"})])
    items: list[tuple[int, JsonValue]] = [(0, {"kind": "text", "text": "é ✓"}), (1, {"n": 1})]
    token = lease.token
    refused = [
        await store.commit("run-1", expected_seq=0, token=token + 1, event=event(1), live=items),
        await store.commit("run-1", expected_seq=1, token=token, event=event(2), live=items),
    ]
    assert isinstance(refused[0], LeaseLost) and isinstance(refused[1], Conflict)
    assert [e.item for e in await store.live("run-1")] == [{"kind": "started"}]
    ok = await store.commit("run-1", expected_seq=0, token=token, event=event(1), live=items)
    assert ok == Committed(seq=1)
    got = await store.live("run-1")
    assert [(e.base, e.item) for e in got] == [(0, {"kind": "started"}), *items]
    ids = [live_order(e.id) for e in got]
    assert ids == sorted(ids) and len(set(ids)) == 3
    again = await store.commit(
        "run-1", expected_seq=1, token=token, event=event(2, key="run-1:0:go"), live=items
    )
    assert again == Duplicate(seq=1)
    assert len(await store.live("run-1")) == 3
    # The items and a memory patch in one commit that ends the run: all of it lands.
    many: list[tuple[int, JsonValue]] = [(1, {"i": i}) for i in range(300)]
    end = dataclasses.replace(event(2, n=7, items=["x"]), status="done")
    assert await store.commit("run-1", expected_seq=1, token=token, event=end, live=many)
    run = await store.load("run-1")
    assert run is not None and (run.status, run.memory["n"], run.memory["items"]) == (
        "done", 7, ["x"],
    )  # fmt: skip
    assert [r.run_id for r in await store.list_runs(status="done")] == ["run-1"]
    assert [e.item for e in (await store.live("run-1", got[-1].id))] == [i for _, i in many]


async def test_a_live_item_that_cannot_be_stored_never_fails_its_commit(store: Store) -> None:
    await store.create(new_run())
    lease = await leased(store)
    items: list[tuple[int, JsonValue]] = [(0, {"x": float("nan")}), (0, {"kind": "ok"})]
    assert await store.commit(
        "run-1", expected_seq=0, token=lease.token, event=event(1), live=items
    )
    assert [e.item for e in await store.live("run-1")] == [{"kind": "ok"}]
    run = await store.load("run-1")
    assert run is not None and run.seq == 1


async def test_history_is_in_order_and_starts_where_asked(store: Store) -> None:
    await store.create(new_run())
    lease = await leased(store)
    for seq in range(1, 13):
        out = await store.commit(
            "run-1", expected_seq=seq - 1, token=lease.token, event=event(seq, n=seq)
        )
        assert out == Committed(seq=seq)
    assert [e.seq for e in await store.history("run-1")] == list(range(13))
    assert [e.seq for e in await store.history("run-1", from_seq=10)] == [10, 11, 12]
    assert await store.history("run-1", from_seq=13) == []


async def test_concurrent_commits_leave_exactly_one_winner_per_seq(store: Store) -> None:
    await store.create(new_run())
    lease = await leased(store)
    wins: list[tuple[int, int]] = []

    async def contender(i: int) -> None:
        for _ in range(40):
            run = await store.load("run-1")
            assert run is not None
            if run.seq >= 10:
                return
            ev = event(run.seq + 1, key=f"task{i}:{run.seq}", n=i)
            out = await store.commit("run-1", expected_seq=run.seq, token=lease.token, event=ev)
            if isinstance(out, Committed):
                wins.append((out.seq, i))
            else:
                assert isinstance(out, Conflict)

    await asyncio.gather(*(contender(i) for i in range(12)))
    history = await store.history("run-1")
    assert [e.seq for e in history] == list(range(11))
    assert sorted(s for s, _ in wins) == list(range(1, 11))
    for seq, i in wins:
        assert history[seq].key == f"task{i}:{seq - 1}"


async def test_list_runs_filters_by_agent_and_status(store: Store) -> None:
    await store.create(new_run("r1"))
    await store.create(new_run("r2"))
    other = new_run("r3")
    await store.create(dataclasses.replace(other, agent="someone-else"))
    lease = await leased(store, "r2")
    done = Event(
        seq=1,
        trigger="go",
        kind="tool",
        source="a",
        dest="z",
        status="done",
        key="r2:0:go",
        ended_at=time.time() + 1,
    )
    await store.commit("r2", expected_seq=0, token=lease.token, event=done)
    assert {r.run_id for r in await store.list_runs()} == {"r1", "r2", "r3"}
    assert [r.run_id for r in await store.list_runs(agent="tester", status="done")] == ["r2"]
    assert [r.run_id for r in await store.list_runs(status="running", agent="tester")] == ["r1"]
    newest_first = [r.run_id for r in await store.list_runs()]
    assert newest_first[0] == "r2"


async def test_corrupt_memory_names_the_key_and_is_left_alone(store: Store) -> None:
    await store.create(new_run())
    key = await corrupt_memory_field(store, "run-1", "n", "{not json")
    with pytest.raises(CorruptData) as caught:
        await store.load("run-1")
    assert caught.value.key.startswith(key) and "'n'" in str(caught.value)
    with pytest.raises(CorruptData):  # still there: nothing repaired or overwritten
        await store.load("run-1")


async def test_corrupt_event_names_the_key(store: Store) -> None:
    await store.create(new_run())
    key = await corrupt_last_event(store, "run-1", '{"seq": "zero"}')
    with pytest.raises(CorruptData) as caught:
        await store.history("run-1")
    assert key in caught.value.key and "not an event" in str(caught.value)


async def test_other_runs_are_unaffected_by_a_corrupt_one(store: Store) -> None:
    await store.create(new_run("bad"))
    await store.create(new_run("good"))
    await corrupt_memory_field(store, "bad", "n", "\x00\xff")
    good = await store.load("good")
    assert good is not None and good.memory["n"] == 0


async def test_deadlines_are_set_and_cleared_by_commits_and_listed_when_due(store: Store) -> None:
    t = time.time()
    await store.create(dataclasses.replace(new_run("w0"), deadline=t - 1))
    await store.create(new_run("w1"))
    await store.create(new_run("w2"))
    lease = await leased(store, "w1")
    waits = dataclasses.replace(event(1, key="w1:0:go"), status="waiting", deadline=t + 60)
    assert await store.commit("w1", expected_seq=0, token=lease.token, event=waits) == Committed(
        seq=1
    )
    lease2 = await leased(store, "w2")
    soon = dataclasses.replace(event(1, key="w2:0:go"), status="waiting", deadline=t - 0.5)
    assert isinstance(
        await store.commit("w2", expected_seq=0, token=lease2.token, event=soon), Committed
    )

    assert await store.due(t) == ["w0", "w2"]  # earliest first
    assert await store.due(t, limit=1) == ["w0"]
    assert await store.due(t + 120) == ["w0", "w2", "w1"]
    loaded = await store.load("w1")
    assert loaded is not None and loaded.deadline == t + 60

    # The next commit without a deadline clears it.
    on = dataclasses.replace(event(2, key="w2:1:go", dest="c"), deadline=None)
    assert isinstance(
        await store.commit("w2", expected_seq=1, token=lease2.token, event=on), Committed
    )
    assert await store.due(t + 120) == ["w0", "w1"]
    loaded = await store.load("w2")
    assert loaded is not None and loaded.deadline is None
    # A refused commit leaves the deadline alone.
    stale = dataclasses.replace(event(2, key="w1:1:go"), deadline=None)
    assert isinstance(
        await store.commit("w1", expected_seq=1, token=lease.token + 5, event=stale), LeaseLost
    )
    assert await store.due(t + 120) == ["w0", "w1"]


async def test_restore_writes_a_run_and_its_history_as_given_once(store: Store) -> None:
    source = new_run("copy", n=3)
    t = time.time()
    run = dataclasses.replace(source, state="c", seq=2, status="waiting", updated_at=t + 2,
                              memory={"n": 3, "items": ["x"]}, deadline=t + 60)  # fmt: skip
    events = [
        Event(seq=0, trigger="start", kind="start", source="", dest="a", status="running",
              key="copy:start", patch={"n": 3, "items": []}, started_at=t, ended_at=t),
        dataclasses.replace(event(1, key="copy:0:go"), patch={"items": ["x"]},
                            usage={"requests": 1}),
        dataclasses.replace(event(2, key="copy:1:go", dest="c"), source="b", status="waiting",
                            deadline=t + 60, messages=[{"kind": "request", "parts": []}]),
    ]  # fmt: skip
    assert await store.restore(run, events) is True
    assert await store.load("copy") == run
    assert await store.history("copy") == events
    assert await store.due(t + 61) == ["copy"]
    assert [r.run_id for r in await store.list_runs()] == ["copy"]
    # Restoring again writes nothing; the keys are known, so a replayed commit is a duplicate.
    assert await store.restore(dataclasses.replace(run, memory={"n": 99}), events) is False
    assert await store.load("copy") == run
    lease = await leased(store, "copy")
    again = dataclasses.replace(events[2], seq=3)
    replay = await store.commit("copy", expected_seq=2, token=lease.token, event=again)
    assert replay == Duplicate(seq=2)


async def test_restore_refuses_a_history_that_does_not_fit_the_run(store: Store) -> None:
    run = dataclasses.replace(new_run("bad"), seq=1, state="b")
    start = Event(seq=0, trigger="start", kind="start", source="", dest="a", status="running",
                  key="bad:start")  # fmt: skip
    with pytest.raises(ValueError, match=r"the events must be seqs 0\.\.1 in order, not \[0\]"):
        await store.restore(run, [start])
    with pytest.raises(ValueError, match="its last event goes to 'c', but the run is in 'b'"):
        await store.restore(run, [start, event(1, dest="c")])
    assert await store.load("bad") is None


async def test_create_records_the_origin_on_the_creation_event(store: Store) -> None:
    await store.create(new_run("child"), origin={"forked_from": "parent", "at": 4})
    [start] = await store.history("child")
    assert start.output == {"forked_from": "parent", "at": 4}


async def test_a_migration_commit_sets_the_version_and_drops_fields(store: Store) -> None:
    await store.create(new_run(old="x"))
    lease = await leased(store)
    migrate = dataclasses.replace(event(1, n=5), version=2, dropped=["old"])
    assert await store.commit(
        "run-1", expected_seq=0, token=lease.token, event=migrate
    ) == Committed(seq=1)
    run = await store.load("run-1")
    assert run is not None and (run.version, run.memory) == (2, {"n": 5, "items": []})
    plain = event(2, n=6)  # an ordinary commit keeps the version
    assert isinstance(
        await store.commit("run-1", expected_seq=1, token=lease.token, event=plain), Committed
    )
    run = await store.load("run-1")
    assert run is not None and (run.version, run.memory) == (2, {"n": 6, "items": []})


async def test_a_lease_says_the_seq_it_was_taken_at(store: Store) -> None:
    await store.create(new_run())
    lease = await leased(store)
    assert lease.seq == 0
    await store.commit("run-1", expected_seq=0, token=lease.token, event=event(1))
    await store.release_lease(lease)
    again = await leased(store, owner="w2")
    assert (again.seq, again.token) == (1, lease.token + 1)
    mine = await store.acquire_lease("run-1", "w2", 10)  # a resend of the same owner's acquire
    assert isinstance(mine, Lease) and (mine.seq, mine.token) == (1, again.token)


async def test_runs_are_listed_by_agent_status_state_and_time(store: Store) -> None:
    t = time.time()
    specs: list[tuple[str, str, RunStatus, str, float]] = [
        ("a1", "alpha", "running", "a", t - 30), ("a2", "alpha", "done", "end", t - 20),
        ("b1", "beta", "done", "end", t - 10), ("b2", "beta", "waiting", "x", t),
    ]  # fmt: skip
    for run_id, agent, status, state, at in specs:
        run = dataclasses.replace(new_run(run_id), agent=agent, created_at=at, updated_at=at)
        await store.create(run)
        if status != "running":
            lease = await leased(store, run_id)
            done = dataclasses.replace(event(1, key=f"{run_id}:0:go", dest=state), status=status,
                                       ended_at=at)  # fmt: skip
            assert isinstance(
                await store.commit(run_id, expected_seq=0, token=lease.token, event=done), Committed
            )
            await store.release_lease(lease)

    async def ids(**query: object) -> list[str]:
        return [r.run_id for r in await store.list_runs(**query)]  # type: ignore[arg-type]

    assert await ids() == ["b2", "b1", "a2", "a1"]  # most recently updated first
    assert await ids(agent="alpha") == ["a2", "a1"]
    assert await ids(status="done") == ["b1", "a2"]
    assert await ids(agent="beta", status="done") == ["b1"]
    assert await ids(state="x") == ["b2"]
    assert await ids(state="a") == ["a1"]
    assert await ids(since=t - 20) == ["b2", "b1", "a2"]
    assert await ids(since=t - 25, until=t - 5) == ["b1", "a2"]
    assert await ids(status="done", limit=1) == ["b1"]
    assert await ids(agent="gamma") == []
    assert await store.reindex() == 4
    assert await ids(status="done") == ["b1", "a2"]
    assert await store.gc(t + 10**6) == 0  # nothing has a retention: nothing goes


async def test_runs_whose_retention_ran_out_are_collected(store: Store) -> None:
    t = time.time()
    for run_id in ("old", "kept"):
        await store.create(new_run(run_id))
        lease = await leased(store, run_id)
        end = dataclasses.replace(event(1, key=f"{run_id}:0:go"), status="done",
                                  expires_at=t + 1 if run_id == "old" else None)  # fmt: skip
        assert isinstance(
            await store.commit(run_id, expected_seq=0, token=lease.token, event=end), Committed
        )
        await store.release_lease(lease)
    if isinstance(store, RedisStore):  # Redis expires the keys itself; gc cleans the indexes
        ttl = await store.client.pttl(store.key("old", "run"))
        assert 0 < ttl <= 1000
        assert await store.client.ttl(store.key("kept", "run")) == -1
        for part in ("run", "events", "keys"):
            await store.client.delete(store.key("old", part))  # as if it had expired
        assert await store.gc(t) == 3  # its entries in the runs, agent and status indexes
    else:
        assert await store.gc(t) == 0  # not yet
        assert await store.gc(t + 2) == 1
    assert await store.load("old") is None and await store.history("old") == []
    assert [r.run_id for r in await store.list_runs()] == ["kept"]
    assert await store.load("kept") is not None


async def test_history_reads_a_range_of_seqs(store: Store) -> None:
    await store.create(new_run())
    lease = await leased(store)
    for seq in range(1, 5):
        await store.commit("run-1", expected_seq=seq - 1, token=lease.token, event=event(seq))
    assert [e.seq for e in await store.history("run-1", 0, 0)] == [0]
    assert [e.seq for e in await store.history("run-1", 1, 3)] == [1, 2, 3]
    assert [e.seq for e in await store.history("run-1", 3)] == [3, 4]
    assert [e.seq for e in await store.history("run-1", 3, 2)] == []
    assert [e.seq for e in await store.history("run-1", 2, 99)] == [2, 3, 4]
