"""Scope ledgers, scope charges made with commits, reservations of requests in flight, and set
limits (`Store.ledger`), on every backend: a charge lands once per event key, Redis Cluster
included; a reservation is admitted atomically."""

from __future__ import annotations

import asyncio
import dataclasses
import time

from storage import Committed, Duplicate, Store
from storage._capabilities import ScopeLedger
from storage.base import ScopeCharge

from .test_runs import event, leased, new_run

CHARGE = ScopeCharge(scope="acme", period="2026-12-07", expires_at=0)


async def test_a_commit_charges_its_scope_once_per_event_key(store: Store) -> None:
    await store.create(new_run())
    lease = await leased(store)
    paid = dataclasses.replace(event(1), usage={"requests": 1, "input_tokens": 7})
    outcome = await store.commit(
        "run-1", expected_seq=0, token=lease.token, event=paid, scope_charge=CHARGE
    )
    assert isinstance(outcome, Committed)
    again = await store.commit(
        "run-1", expected_seq=0, token=lease.token, event=paid, scope_charge=CHARGE
    )
    assert isinstance(again, Duplicate)
    ledger = store.ledger
    assert await ledger.scope_usage("acme", "2026-12-07") == {"requests": 1, "input_tokens": 7}
    assert not await ledger.charge_scope("acme", "2026-12-07", paid.key, {"requests": 1}, 0)
    assert await ledger.charge_scope("acme", "2026-12-07", "other", {"requests": 2}, 0)
    assert (await ledger.scope_usage("acme", "2026-12-07"))["requests"] == 3


async def test_limits_are_set_removed_and_listed(store: Store) -> None:
    ledger = store.ledger
    await ledger.set_limits("scope/acme", {"requests": 6, "cost_nusd": 5})
    await ledger.set_limits("run/r1", {"requests": 2})
    await ledger.set_limits("scope/acme", {"cost_nusd": None})
    assert await ledger.limits("scope/acme") == {"requests": 6}
    assert await ledger.all_limits() == {"run/r1": {"requests": 2}, "scope/acme": {"requests": 6}}


async def test_a_scope_ledger_is_read_and_replaced_whole(store: Store) -> None:
    ledger = store.ledger
    await ledger.charge_scope("acme", "all", "k1", {"requests": 1}, 0)
    await ledger.charge_scope("acme", "all", "k2", {"requests": 2}, 0)
    [kept] = await ledger.scope_ledgers()
    assert kept == ScopeLedger(
        scope="acme", period="all", usage={"requests": 3}, charged=frozenset({"k1", "k2"})
    )
    moved = ScopeLedger(scope="acme", period="all", usage={"requests": 6},
                        charged=frozenset({"k1", "k2", "k3"}))  # fmt: skip
    await ledger.put_scope_ledger(moved)
    assert await ledger.scope_ledgers() == [moved]
    assert not await ledger.charge_scope("acme", "all", "k3", {"requests": 1}, 0)
    assert await ledger.scope_usage("acme", "all") == {"requests": 6}


async def test_concurrent_reserves_admit_exactly_what_the_limit_leaves(store: Store) -> None:
    ledger = store.ledger
    await ledger.charge_scope("acme", "all", "done", {"requests": 2}, 0)
    got = await asyncio.gather(
        *(ledger.reserve("acme", "all", f"k{i}", {"requests": 7}, 600) for i in range(24))
    )
    assert sum(r.admitted for r in got) == 5  # 2 committed + 5 in flight = 7
    refused = [r for r in got if not r.admitted]
    assert all(r.used["requests"] == 7 and r.limits == {"requests": 7} for r in refused)
    assert await ledger.scope_usage("acme", "all") == {"requests": 2}  # nothing charged


async def test_reserving_again_is_idempotent(store: Store) -> None:
    ledger = store.ledger
    assert (await ledger.reserve("acme", "all", "r1", {"requests": 2}, 600)).admitted
    assert (await ledger.reserve("acme", "all", "r2", {"requests": 2}, 600)).admitted
    again = await ledger.reserve("acme", "all", "r1", {"requests": 2}, 600)
    assert again.admitted and again.used["requests"] == 1  # r2's; r1 holds the same one
    # r1's second request (its first answered, not committed) needs room the scope has not
    assert not (await ledger.reserve("acme", "all", "r1", {"requests": 2}, 600,
                                     spent={"requests": 1})).admitted  # fmt: skip
    await ledger.charge_scope("acme", "all", "e1", {"requests": 1}, 0, holder="r1")
    assert not (await ledger.reserve("acme", "all", "r3", {"requests": 2}, 600)).admitted
    after = await ledger.reserve("acme", "all", "r3", {"requests": 3}, 600)
    assert after.admitted and after.used["requests"] == 2  # r1 charged, r2 in flight


async def test_a_released_request_frees_its_room(store: Store) -> None:
    ledger = store.ledger
    limit = {"requests": 3}
    assert (await ledger.reserve("acme", "all", "k1", limit, 600, spent={"requests": 1})).admitted
    assert (await ledger.reserve("acme", "all", "k2", limit, 600)).admitted  # k1 holds 2
    assert not (await ledger.reserve("acme", "all", "k3", limit, 600)).admitted
    await ledger.release("acme", "all", "k1", keep=1)  # its answered request stays held
    assert (await ledger.reserve("acme", "all", "k3", limit, 600)).admitted
    await ledger.release("acme", "all", "k3")
    await ledger.release("acme", "all", "k2")
    await ledger.release("acme", "all", "gone")  # nothing held: nothing to do
    probe = await ledger.reserve("acme", "all", "k4", limit, 600)
    assert probe.admitted and probe.used["requests"] == 1  # k1's one


async def test_a_reservation_its_holder_never_gave_back_lapses(store: Store) -> None:
    ledger = store.ledger
    limit = {"requests": 2}
    assert (await ledger.reserve("acme", "all", "kept", limit, 600)).admitted
    assert (await ledger.reserve("acme", "all", "dead", limit, 0.2)).admitted
    deadline = time.monotonic() + 30
    while not (await ledger.reserve("acme", "all", "new", limit, 600)).admitted:
        assert time.monotonic() < deadline, "the dead holder's reservation never lapsed"
        await asyncio.sleep(0.05)
    assert not (await ledger.reserve("acme", "all", "more", limit, 600)).admitted


async def test_the_charge_of_a_commit_drops_the_runs_reservation(store: Store) -> None:
    await store.create(new_run())
    lease = await leased(store)
    paid = dataclasses.replace(event(1), usage={"requests": 1, "input_tokens": 7})
    ledger = store.ledger
    assert (await ledger.reserve("acme", CHARGE.period, "run-1", {"requests": 9}, 600)).admitted
    outcome = await store.commit(
        "run-1", expected_seq=0, token=lease.token, event=paid, scope_charge=CHARGE
    )
    assert isinstance(outcome, Committed)
    probe = await ledger.reserve("acme", CHARGE.period, "probe", {"requests": 9}, 600)
    assert probe.used["requests"] == 1  # charged once, and no longer in flight
    await ledger.charge_scope("acme", CHARGE.period, "e2", {"requests": 1}, 0, holder="probe")
    again = await ledger.reserve("acme", CHARGE.period, "next", {"requests": 9}, 600)
    assert again.used["requests"] == 2  # the probe's charge dropped its reservation


async def test_reserve_judges_the_set_limits_and_every_figure(store: Store) -> None:
    ledger = store.ledger
    await ledger.charge_scope("acme", "all", "k0", {"requests": 1, "input_tokens": 6,
                                                    "output_tokens": 4}, 0)  # fmt: skip
    declared = {"requests": 1, "total_tokens": 100}
    assert not (await ledger.reserve("acme", "all", "k1", declared, 600)).admitted
    await ledger.set_limits("scope/acme", {"requests": 5})
    await ledger.set_limits("scope/other", {"requests": 0})
    got = await ledger.reserve("acme", "all", "k1", declared, 600)
    assert got.admitted and got.limits == {"requests": 5, "total_tokens": 100}
    assert got.used["total_tokens"] == 10 and got.used["input_tokens"] == 6
    spent = {"requests": 1, "input_tokens": 50, "output_tokens": 40}  # k1's answered request
    full = await ledger.reserve("acme", "all", "k1", declared, 600, spent=spent)
    assert not full.admitted and full.used["total_tokens"] == 100
    await ledger.set_limits("scope/acme", {"requests": 1})  # lower than declared: it holds
    assert not (await ledger.reserve("acme", "all", "k2", {"requests": 9}, 600)).admitted
