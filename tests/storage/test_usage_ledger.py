"""The usage ledger kept by the commit, the scope ledger and limits, the shared rate limit:
the same on every backend."""

from __future__ import annotations

import dataclasses
import itertools

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storage import Committed, Duplicate, Event, LeaseLost, Store
from storage._capabilities import Bucket
from storage.base import ScopeCharge

from .conformance.test_runs import event, leased, new_run

_ids = itertools.count()
_USAGE = st.dictionaries(
    st.sampled_from(["requests", "input_tokens", "output_tokens", "cost_nusd", "tool_calls"]),
    st.integers(min_value=0, max_value=10**12),
    max_size=5,
)


def _with_usage(e: Event, usage: dict[str, int]) -> Event:
    return dataclasses.replace(e, usage=usage or None)


def _sum(usages: list[dict[str, int]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for usage in usages:
        for k, v in usage.items():
            if v:
                total[k] = total.get(k, 0) + v
    return total


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(usages=st.lists(_USAGE, min_size=1, max_size=6))
async def test_the_run_totals_are_the_sum_of_the_committed_events_usage(
    store: Store, usages: list[dict[str, int]]
) -> None:
    run = await store.create(dataclasses.replace(new_run(), run_id=f"r{next(_ids)}"))
    lease = await leased(store, run.run_id)
    for seq, usage in enumerate(usages, start=1):
        e = _with_usage(event(seq, key=f"{run.run_id}:{seq}"), usage)
        assert await store.commit(
            run.run_id, expected_seq=seq - 1, token=lease.token, event=e
        ) == Committed(seq=seq)
    stored = await store.load(run.run_id)
    assert stored is not None
    assert (
        stored.usage
        == _sum(usages)
        == _sum([e.usage or {} for e in await store.history(run.run_id)])
    )


async def test_refused_commits_add_nothing(store: Store) -> None:
    await store.create(new_run())
    lease = await leased(store)
    first = _with_usage(event(1), {"requests": 1, "input_tokens": 5})
    assert await store.commit("run-1", expected_seq=0, token=lease.token, event=first) == Committed(
        seq=1
    )
    again = await store.commit("run-1", expected_seq=0, token=lease.token, event=first)
    assert again == Duplicate(seq=1)
    stale = _with_usage(event(2), {"requests": 7})
    assert (
        await store.commit("run-1", expected_seq=1, token=lease.token - 1, event=stale)
        == LeaseLost()
    )
    stored = await store.load("run-1")
    assert stored is not None and stored.usage == {"requests": 1, "input_tokens": 5}


async def test_restore_keeps_the_totals(store: Store) -> None:
    await store.create(new_run())
    lease = await leased(store)
    e = _with_usage(event(1), {"requests": 2, "cost_nusd": 150})
    await store.commit("run-1", expected_seq=0, token=lease.token, event=e)
    stored = await store.load("run-1")
    assert stored is not None
    copy = dataclasses.replace(stored, run_id="run-2", holder="")
    events = await store.history("run-1")
    assert await store.restore(copy, events)
    restored = await store.load("run-2")
    assert restored is not None and restored.usage == {"requests": 2, "cost_nusd": 150}


async def test_a_scope_is_charged_once_per_event_key(store: Store) -> None:
    ledger = store.ledger
    assert await ledger.charge_scope("acme", "2026-12-02", "k1", {"requests": 1}, 0)
    assert not await ledger.charge_scope("acme", "2026-12-02", "k1", {"requests": 1}, 0)
    assert await ledger.charge_scope("acme", "2026-12-02", "k2", {"requests": 2}, 0)
    assert await ledger.scope_usage("acme", "2026-12-02") == {"requests": 3}
    assert await ledger.scope_usage("acme", "2026-12-03") == {}
    await ledger.set_limits("scope/acme", {"requests": 10, "cost_nusd": 5})
    await ledger.set_limits("scope/acme", {"cost_nusd": None})
    assert await ledger.limits("scope/acme") == {"requests": 10}


async def test_a_commit_charges_its_scope_in_the_same_write_once_per_key(store: Store) -> None:
    run = await store.create(dataclasses.replace(new_run(), run_id=f"r{next(_ids)}"))
    lease = await leased(store, run.run_id)
    charge = ScopeCharge(scope="acme", period="2026-12-02", expires_at=0)
    first = _with_usage(event(1, key=f"{run.run_id}:1"), {"requests": 1, "input_tokens": 5})
    ok = await store.commit(
        run.run_id, expected_seq=0, token=lease.token, event=first, scope_charge=charge
    )
    assert ok == Committed(seq=1)
    again = await store.commit(
        run.run_id, expected_seq=0, token=lease.token, event=first, scope_charge=charge
    )
    assert again == Duplicate(seq=1)  # refused: charges nothing
    ledger = store.ledger
    assert not await ledger.charge_scope("acme", "2026-12-02", first.key, {"requests": 1}, 0)
    second = _with_usage(event(2, key=f"{run.run_id}:2"), {"requests": 1})
    assert await ledger.charge_scope("acme", "2026-12-02", second.key, {"requests": 1}, 0)
    done = dataclasses.replace(second, status="done")  # charged before, by its key: not again
    assert await store.commit(
        run.run_id, expected_seq=1, token=lease.token, event=done, scope_charge=charge
    ) == Committed(seq=2)
    assert await ledger.scope_usage("acme", "2026-12-02") == {"requests": 2, "input_tokens": 5}
    stored = await store.load(run.run_id)
    assert stored is not None and stored.status == "done"
    assert stored.usage == {"requests": 2, "input_tokens": 5}
    assert run.run_id in {r.run_id for r in await store.list_runs(status="done")}
    assert run.run_id not in {r.run_id for r in await store.list_runs(status="running")}


async def test_a_rate_limit_gives_the_burst_then_says_how_long_to_wait(store: Store) -> None:
    limiter = store.limiter
    bucket = Bucket(rate=1.0, burst=2.0, concurrency=3)
    assert await limiter.acquire("m", bucket, "a") == (0.0, "")
    assert await limiter.acquire("m", bucket, "b") == (0.0, "")
    wait, why = await limiter.acquire("m", bucket, "c")
    assert why == "requests" and 0 < wait <= 1.0
    await limiter.pause("m", 30)
    wait, why = await limiter.acquire("m", bucket, "c")
    assert why == "paused" and 29 < wait <= 30


async def test_a_concurrency_cap_holds_until_a_slot_is_given_back(store: Store) -> None:
    limiter = store.limiter
    bucket = Bucket(concurrency=1)
    assert await limiter.acquire("c", bucket, "a") == (0.0, "")
    assert (await limiter.acquire("c", bucket, "b"))[1] == "concurrency"
    await limiter.release("c", "a", 0)
    assert await limiter.acquire("c", bucket, "b") == (0.0, "")
