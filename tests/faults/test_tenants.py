"""Tenants stay apart: what one key prefix's `gc`, `reindex`, `export`, `runs` and `workers`
do leaves every key of every other prefix byte-identical (its full `DUMP`, and its TTL).

Tenants `a` and `a.b` share a server with `a:agent`, a tenant an older agentfsm accepted (its
keys are laid out as that version wrote them): `a`'s `reindex` once deleted all of
`a:agent`'s keys. Prefixes that could match another's keys (`a:b`, `*`) are refused now, naming the
command that moves a legacy tenant's runs (`python -m storage.rekey`), which this tests too.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from pydantic import BaseModel

from agents import Agent, tool, wait
from storage import RedisStore
from storage.base import Job, WorkerBeat
from tests.redis_server import RedisServer

ROOT = Path(__file__).resolve().parents[2]
TENANTS = ("a", "a.b")
LEGACY = "a:agent"  # its keys match the `a:agent:*` pattern of `a`'s agent indexes
COMMANDS = (("gc",), ("reindex",), ("export", "-o", "out.jsonl"), ("runs",), ("workers",))


class Memo(BaseModel):
    n: int = 0


def agent(name: str, retention: float | None = None) -> Agent[Memo]:
    return Agent(
        name=name, memory=Memo, initial="new", final=["done"], retention=retention,
        transitions=[
            tool("work", "new", "parked", lambda m: m.n + 1, into="n"),
            wait("go", "parked", "done", timeout=3600, on_timeout="done"),
        ],
    )  # fmt: skip


async def populate(url: str, prefix: str, *, legacy: bool = False) -> None:
    """Runs of agents and with ids chosen to look like index and queue key parts (for a
    legacy tenant, none whose keys the old layout gave to two things at once)."""
    store = RedisStore.from_url(url, prefix=prefix)
    try:
        ids = {"agent": "queue", "status": "runs", "dead": "agent", "run": "status"}
        if legacy:
            ids = {"agent": "agent", "status": "runs", "work": "status", "other": "x"}
        for name, run_id in ids.items():
            machine = agent(name, retention=3600)
            for parked in (run_id, f"{name}:x"):
                run = await machine.start(store, Memo(), run_id=parked)
                await run.until_done()  # parked, with a deadline
            done = await machine.start(store, Memo(), run_id=f"{name}.finished")
            await done.until_done()
            await done.send("go")  # done, with retention: its keys expire
            await done.release()
            await machine.submit(store, Memo(), run_id=f"{name}.queued")
        queue: Any = store.queue
        await queue.dead_letter(Job(id="0-1", agent="dead", run_id="queue"), "a test")
        await queue.beat(
            WorkerBeat(name="w1", host="h", pid=1, agents=("agent",), concurrency=1,
                       started_at=time.time(), beat_at=time.time(), holding=())
        )  # fmt: skip
    finally:
        await store.close()


def as_legacy(client: redis.Redis, source: str, legacy: str) -> None:
    """Move tenant `source`'s keys to `legacy`, laid out as an older agentfsm wrote them."""
    for key in list(client.scan_iter(match=f"{source}:*")):
        rest = key[len(source) + 1 :]
        if rest.startswith("{queue}:q:"):
            rest = "{queue}:" + rest[len("{queue}:q:") :]
        client.rename(key, f"{legacy}:{rest}")


def snapshot(client: redis.Redis, skip: str | None) -> dict[str, tuple[bytes, bool]]:
    """Every key not starting with `skip` + ":": its DUMP, and whether it has a TTL."""
    raw = redis.Redis(connection_pool=client.connection_pool)
    keys = [k for k in client.scan_iter(count=1000) if skip is None or not k.startswith(skip + ":")]
    dumps = {}
    for key in keys:
        dumped = raw.dump(key)
        assert isinstance(dumped, bytes)
        dumps[key] = (dumped, client.pttl(key) > 0)
    return dumps


def agentfsm(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "agents", *args], cwd=cwd, env=env, capture_output=True,
        text=True, timeout=120,
    )  # fmt: skip


@pytest.fixture
def server(redis_factory: type[RedisServer], tmp_path: Path) -> Iterator[RedisServer]:
    server = redis_factory(
        tmp_path / "tenants"
    ).start()  # of its own: every key on it is ours to compare
    for prefix in TENANTS:
        asyncio.run(populate(server.url, prefix))
    asyncio.run(populate(server.url, "legacy", legacy=True))
    client = redis.Redis(port=server.port, decode_responses=True)
    as_legacy(client, "legacy", LEGACY)
    client.close()
    yield server


@pytest.fixture
def client(server: RedisServer) -> Iterator[redis.Redis]:
    c = redis.Redis(port=server.port, decode_responses=True)
    yield c
    c.close()


@pytest.mark.redis
def test_each_command_of_one_tenant_leaves_the_others_byte_identical(
    server: RedisServer, client: redis.Redis, tmp_path: Path
) -> None:
    for tenant in TENANTS:
        listed = agentfsm("runs", "--store", f"{server.url}?prefix={tenant}", cwd=tmp_path)
        for command in COMMANDS:
            before = snapshot(client, skip=tenant)
            url = f"{server.url}?prefix={tenant}"
            done = agentfsm(command[0], "--store", url, *command[1:], cwd=tmp_path)
            assert done.returncode == 0, (command, done.stdout, done.stderr)
            after = snapshot(client, skip=tenant)
            assert after.keys() == before.keys(), (tenant, command)
            changed = [k for k in before if before[k] != after[k]]
            assert not changed, (tenant, command, changed)
        # ... and its own runs are all there after its own reindex and gc.
        again = agentfsm("runs", "--store", f"{server.url}?prefix={tenant}", cwd=tmp_path)
        assert again.stdout == listed.stdout
        assert listed.stdout.count("\n") >= 16


@pytest.mark.redis
@pytest.mark.parametrize("prefix", ["*", LEGACY, "a:b", "a?", "a[b]", "a{b}", ""])
def test_a_prefix_that_could_match_other_tenants_keys_is_refused(
    server: RedisServer, client: redis.Redis, tmp_path: Path, prefix: str
) -> None:
    before = snapshot(client, skip=None)
    for command in COMMANDS:
        url = f"{server.url}?prefix={prefix}"
        done = agentfsm(command[0], "--store", url, *command[1:], cwd=tmp_path)
        assert done.returncode == 2, (command, done.stdout, done.stderr)
        message = " ".join(done.stderr.split())
        assert "invalid key prefix" in message and "python -m storage.rekey" in message
    assert snapshot(client, skip=None) == before


@pytest.mark.redis
def test_rekey_moves_a_legacy_tenant_and_nothing_else(
    server: RedisServer, client: redis.Redis, tmp_path: Path
) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    others = snapshot(client, skip=None)
    moved = subprocess.run(
        [sys.executable, "-m", "storage.rekey", server.url, LEGACY, "a_b"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert moved.returncode == 0, moved.stderr
    assert "moved 16 run(s) and 5 queue stream(s)" in moved.stdout
    assert "indexed 16 run(s)" in moved.stdout
    after = snapshot(client, skip="a_b")
    # The legacy tenant's run keys and streams are gone from it; its old indexes stay.
    gone = {k for k in others if k.startswith(LEGACY + ":")} - after.keys()
    assert gone and all("{" in k for k in gone)
    assert {k: v for k, v in after.items() if k in others} == {
        k: v for k, v in others.items() if k not in gone
    }
    listed = agentfsm("runs", "--store", f"{server.url}?prefix=a_b", cwd=tmp_path)
    reference = agentfsm("runs", "--store", f"{server.url}?prefix=a", cwd=tmp_path)
    assert listed.returncode == 0 and listed.stdout.count("\n") == reference.stdout.count("\n")

    async def queued() -> list[str]:
        store = RedisStore.from_url(server.url, prefix="a_b")
        try:
            queue: Any = store.queue
            await queue.ensure_group(["agent"])
            jobs = await queue.claim("c", ["agent"], 10, 0.1)
            return [j.run_id for j in jobs]
        finally:
            await store.close()

    assert asyncio.run(queued()) == ["agent.queued"]
