"""Crash points inside the store's multi-step operations, on every backend: whatever step a
process dies after, `list_runs` agrees with every run's status and every scope charge lands
exactly once. (Embedded commits are one transaction: there the points fall around it.)"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

import storage.redis._indexes as redis_indexes
from storage import Committed, EmbeddedStore, RedisStore, RunStatus, Store
from storage.base import ScopeCharge
from storage.postgres import PostgresStore

from .test_runs import event, leased, new_run

_ROOT = str(Path(__file__).resolve().parents[3])


class Crash(BaseException):
    """The process dies here (nothing after it runs, nothing catches it)."""


def forget(store: Store) -> None:
    """What a new process would not know (a RedisStore's memory of run statuses)."""
    if isinstance(store, RedisStore):
        store._statuses.clear()


async def listed(store: Store, status: RunStatus) -> list[str]:
    plain = [r.run_id for r in await store.list_runs(status=status)]
    paged = [r.run_id for r in await store.list_runs(status=status, before=(math.inf, ""))]
    assert plain == paged
    return plain


async def agrees(store: Store, run_id: str, status: RunStatus) -> None:
    record = await store.load(run_id)
    assert record is not None and record.status == status
    for each in ("running", "waiting", "done", "failed", "cancelled"):
        assert (run_id in await listed(store, each)) == (each == status), each


def final(run_id: str, status: RunStatus = "done") -> Any:
    return dataclasses.replace(event(1, key=f"{run_id}:0:go"), status=status, usage={"requests": 1})


@pytest.mark.parametrize("status", ["done", "waiting", "failed"])
async def test_a_crash_right_after_a_final_commit_leaves_listings_and_charges_right(
    store: Store, status: RunStatus, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def crash(*args: Any) -> None:
        raise Crash

    monkeypatch.setattr(redis_indexes, "after_commit", crash)
    await store.create(new_run("c1"))
    await agrees(store, "c1", "running")
    lease = await leased(store, "c1")
    charge = ScopeCharge(scope="acme", period="all")
    try:
        outcome = await store.commit(
            "c1", expected_seq=0, token=lease.token, event=final("c1", status), scope_charge=charge
        )
        assert isinstance(outcome, Committed)  # one atomic write: nothing came after it
    except Crash:
        assert isinstance(store, RedisStore) and not store.standalone  # Cluster only
    monkeypatch.undo()
    forget(store)
    assert await store.ledger.scope_usage("acme", "all") == {"requests": 1}
    await agrees(store, "c1", status)
    await store.gc(0)
    await agrees(store, "c1", status)
    assert await store.ledger.scope_usage("acme", "all") == {"requests": 1}


async def test_a_crash_between_a_scope_charge_and_its_settling_charges_once(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    if isinstance(store, RedisStore) and not store.standalone:
        script = store.script

        def crashing(name: str) -> Any:
            ran = script(name)
            if name != "scope_charge":
                return ran

            async def charge_then_crash(**kwargs: Any) -> None:
                await ran(**kwargs)
                raise Crash  # charged, the pending entry not yet deleted

            return charge_then_crash

        monkeypatch.setattr(store, "script", crashing)
    await store.create(new_run("c2"))
    lease = await leased(store, "c2")
    charge = ScopeCharge(scope="acme", period="all")
    with contextlib.suppress(Crash):
        await store.commit(
            "c2", expected_seq=0, token=lease.token, event=final("c2"), scope_charge=charge
        )
    monkeypatch.undo()
    forget(store)
    await store.load("c2")  # settles what is pending: the charge is made again, and refused
    await store.gc(0)
    assert await store.ledger.scope_usage("acme", "all") == {"requests": 1}
    await agrees(store, "c2", "done")


async def test_a_process_killed_inside_a_final_commit_leaves_listings_and_charges_right(
    store: Store, tmp_path: Path
) -> None:
    """A real SIGKILL: on Redis right after the commit script answered, before the upkeep
    beside it; elsewhere right after the commit."""
    if isinstance(store, RedisStore):
        if store._reconnect is None:
            pytest.skip("fakeredis lives in this process only")
        url = f"{store._where}{'&' if '?' in store._where else '?'}prefix={store.prefix}"
    elif isinstance(store, EmbeddedStore) and store.path != ":memory:":
        url = f"sqlite:///{store.path}"
    elif isinstance(store, PostgresStore):
        url = store.url
    else:
        pytest.skip("memory:// lives in this process only")
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.storage.conformance.crash_child", url, "k1",
        stdout=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONPATH": _ROOT}, cwd=_ROOT,
    )  # fmt: skip
    assert child.stdout is not None
    assert await child.stdout.readline() == b"committing\n"
    assert await asyncio.wait_for(child.wait(), 60) == -signal.SIGKILL
    assert await store.ledger.scope_usage("acme", "all") == {"requests": 1}
    await agrees(store, "k1", "done")
    await store.gc(0)
    assert await store.ledger.scope_usage("acme", "all") == {"requests": 1}


async def test_a_crash_before_a_creates_script_leaves_no_run_listed(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cluster indexes a new run first (an entry without a run is harmless): a crash right
    after that lists nothing, and `gc` drops the entries."""
    if isinstance(store, RedisStore) and not store.standalone:
        index_run = redis_indexes.index_run

        async def index_then_crash(*args: Any) -> None:
            await index_run(*args)
            raise Crash

        monkeypatch.setattr(redis_indexes, "index_run", index_then_crash)
    with contextlib.suppress(Crash):
        await store.create(new_run("ghost"))
    monkeypatch.undo()
    created = await store.load("ghost") is not None
    for status in ("running", "done"):
        assert await listed(store, status) == (["ghost"] if created and status == "running" else [])
    assert [r.run_id for r in await store.list_runs()] == (["ghost"] if created else [])
    await store.gc(0)
    if isinstance(store, RedisStore) and not created:
        assert await store.client.zrange(f"{store.prefix}:runs", 0, -1) == []
