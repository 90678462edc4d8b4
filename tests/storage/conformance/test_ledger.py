"""Scope ledgers, scope charges made with commits, and set limits (`Store.ledger`), on every
backend: a charge lands once per event key, Redis Cluster included."""

from __future__ import annotations

import dataclasses

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


async def test_a_scopes_usage_and_set_limits_are_read_together(store: Store) -> None:
    ledger = store.ledger
    assert await ledger.scope_state("acme", "all") == ({}, {})
    await ledger.charge_scope("acme", "all", "k1", {"requests": 2, "input_tokens": 9}, 0)
    await ledger.set_limits("scope/acme", {"requests": 6})
    await ledger.set_limits("scope/other", {"requests": 1})
    await ledger.charge_scope("other", "all", "k1", {"requests": 1}, 0)
    assert (
        await ledger.scope_state("acme", "all")
        == (
            await ledger.scope_usage("acme", "all"),
            await ledger.limits("scope/acme"),
        )
        == ({"requests": 2, "input_tokens": 9}, {"requests": 6})
    )
