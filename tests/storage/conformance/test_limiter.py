"""Rate limits (`Store.limiter`) on every backend, and the one liveness rule: a slot whose
holder is provably dead on this host is free at once; one whose holder lives waits."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest

from storage import EmbeddedStore, RedisStore, Store
from storage._capabilities import Bucket
from storage.postgres import PostgresStore
from storage.process import owner_id

_ROOT = str(Path(__file__).resolve().parents[3])
ONE = Bucket(concurrency=1, slot_ttl=300)


async def test_a_slot_is_held_until_given_back(store: Store) -> None:
    limiter, me = store.limiter, owner_id()
    assert await limiter.acquire("m", ONE, f"{me}:a") == (0.0, "")
    wait, why = await limiter.acquire("m", ONE, f"{me}:b")
    assert wait > 0 and why == "concurrency"  # a live holder (this process): wait
    await limiter.release("m", f"{me}:a", 0)
    assert await limiter.acquire("m", ONE, f"{me}:b") == (0.0, "")


async def test_a_paused_key_waits_for_everyone(store: Store) -> None:
    await store.limiter.pause("p", 30)
    wait, why = await store.limiter.acquire("p", Bucket(rate=100, burst=5), "x")
    assert why == "paused" and 25 < wait <= 30


def _url_of(store: Store) -> str | None:
    if isinstance(store, RedisStore) and store._reconnect is not None:
        return f"{store._where}{'&' if '?' in store._where else '?'}prefix={store.prefix}"
    if isinstance(store, EmbeddedStore) and store.path != ":memory:":
        return f"sqlite:///{store.path}"
    if isinstance(store, PostgresStore):
        return store.url
    return None


async def test_a_sigkilled_holders_slot_is_free_at_once(store: Store) -> None:
    url = _url_of(store)
    if url is None:
        pytest.skip("this store lives in one process only")
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.storage.conformance.slot_child", url, "model",
        stdout=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONPATH": _ROOT}, cwd=_ROOT,
    )  # fmt: skip
    assert child.stdout is not None
    holder = (await asyncio.wait_for(child.stdout.readline(), 60)).decode().strip()
    me = f"{owner_id()}:mine"
    _, why = await store.limiter.acquire("model", ONE, me)
    assert why == "concurrency"  # the child lives: its slot is its own
    child.send_signal(signal.SIGKILL)
    await child.wait()
    assert await store.limiter.acquire("model", ONE, me) == (0.0, "")
    assert holder.startswith(owner_id().split(":")[0])  # the child's id: this host's
