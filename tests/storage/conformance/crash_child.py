"""A process that dies (SIGKILL) right after a run's final commit, before anything after it.

    python -m tests.storage.conformance.crash_child STORE_URL RUN_ID

It creates the run, leases it, and commits its final event with a scope charge (scope
"acme", period "all"). On Redis the kill comes inside the store's commit, right after the
commit script answered and before the upkeep beside it (Cluster: the index moves and the
scope charge); elsewhere right after `commit` returned. It prints "committing" first.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import sys
from typing import Any

import storage.redis._indexes as redis_indexes
from storage import Lease, open_store
from storage.base import ScopeCharge

from .test_runs import event, new_run


def die(*args: Any) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


async def main(url: str, run_id: str) -> None:
    store = open_store(url)
    redis_indexes.after_commit = die  # type: ignore[assignment]
    await store.create(new_run(run_id))
    lease = await store.acquire_lease(run_id, "w1", 10)
    assert isinstance(lease, Lease)
    final = dataclasses.replace(
        event(1, key=f"{run_id}:0:go"), status="done", usage={"requests": 1}
    )
    print("committing", flush=True)
    await store.commit(
        run_id, expected_seq=0, token=lease.token, event=final,
        scope_charge=ScopeCharge(scope="acme", period="all"),
    )  # fmt: skip
    die()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
