"""Ambiguous writes: the server applies a script, then the connection dies before its reply.

A TCP proxy of our own sits between a `RedisStore` and a real redis-server. When armed, it
forwards the client's `EVALSHA` of one script, waits for the server's reply, drops it and
closes both sides: the client cannot know whether its write landed. redis-py's retry
(`RedisStore.from_url(retries=...)`) sends the command again on a new connection. Armed to
hold instead, it keeps the command (or the server's reply) back, so that the test can cancel
the task waiting for it: a commit cut short by a cancellation.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from importlib.resources import files
from typing import Literal

import pytest
import pytest_asyncio

from statemachine import StepContext
from statemachine.errors import RunTakenOver
from storage import RedisStore
from storage.errors import StoreUnavailable

from ..keys import plain
from ..redis_server import RedisServer
from .fault_agent import CountingStore, Progress, make_agent

pytestmark = pytest.mark.redis


def script_sha(name: str) -> str:
    """The SHA1 redis-py sends in `EVALSHA` for one of the store's scripts."""
    text = files("storage.redis").joinpath("scripts", name).read_text(encoding="utf-8")
    return hashlib.sha1(text.encode()).hexdigest()


COMMIT, LEASE, CREATE = script_sha("commit.lua"), script_sha("lease.lua"), script_sha("create.lua")


@dataclass
class CutRule:
    sha: str
    contains: bytes = b""
    alternate: bool = False
    """Cut every other matching command: the 1st, 3rd, ... (each cut one's resend passes)."""
    remaining: int = 1
    """How many more to cut; -1 for no limit."""
    seen: int = 0
    hold: Literal["", "request", "reply"] = ""
    """Instead of cutting: keep the command from the server, or its reply from the client."""


class CutProxy:
    """127.0.0.1:`port` -> the server at `upstream_port`, cutting replies as `rule` says."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.rule: CutRule | None = None
        self.cuts = 0
        self.holding = asyncio.Event()
        """Set when a held command (or its reply) is being kept back."""
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> CutProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    def _should_cut(self, chunk: bytes) -> bool:
        rule = self.rule
        if rule is None or rule.remaining == 0:
            return False
        if b"EVALSHA" not in chunk.upper() or rule.sha.encode() not in chunk:
            return False
        if rule.contains not in chunk:
            return False
        rule.seen += 1
        if rule.alternate and rule.seen % 2 == 0:
            return False
        if rule.remaining > 0:
            rule.remaining -= 1
        self.cuts += 1
        return True

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        writers = [client_w]
        try:
            server_r, server_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)
            writers.append(server_w)
            await self._pump(client_r, client_w, server_r, server_w)
        finally:
            for w in writers:
                w.close()
                with contextlib.suppress(Exception):
                    await w.wait_closed()
            self._tasks.discard(task)

    async def _pump(
        self,
        client_r: asyncio.StreamReader,
        client_w: asyncio.StreamWriter,
        server_r: asyncio.StreamReader,
        server_w: asyncio.StreamWriter,
    ) -> None:
        cut = asyncio.Event()
        hold = ""

        async def client_to_server() -> None:
            nonlocal hold
            while data := await client_r.read(65536):
                if self._should_cut(data):
                    assert self.rule is not None
                    hold = self.rule.hold
                    cut.set()  # before forwarding: the reply must not reach the client
                    if hold == "request":
                        self.holding.set()
                        await asyncio.Event().wait()  # never forwarded
                server_w.write(data)
                await server_w.drain()

        async def server_to_client() -> None:
            while data := await server_r.read(65536):
                if cut.is_set():
                    if hold == "reply":
                        self.holding.set()
                        await asyncio.Event().wait()  # applied, never answered
                    return  # the server has answered (so it ran the script): drop the answer
                client_w.write(data)
                await client_w.drain()

        pumps = [asyncio.create_task(client_to_server()), asyncio.create_task(server_to_client())]
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)


@pytest_asyncio.fixture
async def proxy(redis_server: RedisServer) -> AsyncIterator[CutProxy]:
    p = await CutProxy(redis_server.port).start()
    yield p
    await p.stop()


STEPS = 8


async def load_scripts(store: RedisStore) -> None:
    """Put the scripts in the server's cache first, so no NOSCRIPT round trip is cut instead."""
    for name in ("commit.lua", "lease.lua", "create.lua"):
        text = files("storage.redis").joinpath("scripts", name).read_text(encoding="utf-8")
        await store.client.script_load(text)


def counted() -> tuple[Counter[str], Callable[[StepContext], None]]:
    """Runs of the step bodies by idempotency key, and the effect that counts them."""
    effects: Counter[str] = Counter()

    def effect(ctx: StepContext) -> None:
        effects[ctx.idempotency_key] += 1

    return effects, effect


async def check_run(store: RedisStore, run_id: str, effects: Counter[str]) -> None:
    """Done, gap-free, each step once in the history and its side effect applied once."""
    record = await store.load(run_id)
    assert record is not None
    assert (record.status, record.seq, record.state) == ("done", STEPS, f"s{STEPS}")
    assert record.memory["done"] == [f"t{i}" for i in range(STEPS)]
    history = await store.history(run_id)
    assert [e.seq for e in history] == list(range(STEPS + 1))
    assert [e.trigger for e in history[1:]] == [f"t{i}" for i in range(STEPS)]
    keys = [e.key for e in history[1:]]
    assert [plain(k) for k in keys] == [f"{run_id}:{i}:t{i}" for i in range(STEPS)]
    assert effects == Counter(keys)  # every committed step applied once, nothing else ran


async def test_every_commit_reply_lost_is_absorbed(proxy: CutProxy, prefix: str) -> None:
    """Each commit's reply is lost once: the resend answers Duplicate and the run goes on."""
    effects, effect = counted()
    store = CountingStore.connect(proxy.url, prefix=prefix)
    agent = make_agent(STEPS, 5.0, effect)
    try:
        await load_scripts(store)
        run = await agent.start(store, Progress(), run_id="ambiguous")
        proxy.rule = CutRule(COMMIT, alternate=True, remaining=-1)
        await run.until_done()
        proxy.rule = None
        assert (run.status, run.seq) == ("done", STEPS)
        await check_run(store, "ambiguous", effects)
    finally:
        await store.close()
    assert proxy.cuts == STEPS
    # Every commit landed on its first send and was answered Duplicate on its resend.
    assert store.outcomes == Counter({"Duplicate": STEPS})


async def test_lost_commit_reply_without_retries_resumes(proxy: CutProxy, prefix: str) -> None:
    """With `retries=0` the lost reply surfaces as `StoreUnavailable`; a resume then finds the
    commit applied and goes on from it: the step is not run again."""
    effects, effect = counted()
    agent = make_agent(STEPS, 5.0, effect)
    fragile = RedisStore.from_url(proxy.url, prefix=prefix, retries=0)
    try:
        await load_scripts(fragile)
        run = await agent.start(fragile, Progress(), run_id="no-retry")
        await run.step()
        proxy.rule = CutRule(COMMIT, contains=f"no-retry:{run.record.nonce}:1:t1".encode())
        with pytest.raises(StoreUnavailable):
            await run.step()
        assert proxy.cuts == 1
        await run.release(quiet=True)
    finally:
        await fragile.close()
    store = RedisStore.from_url(proxy.url, prefix=prefix)
    try:
        resumed = await agent.resume(store, "no-retry", lease_wait=6.0)
        assert resumed.seq == 2  # the commit whose answer was lost is there
        await resumed.until_done()
        await check_run(store, "no-retry", effects)
    finally:
        await store.close()


async def test_the_same_run_goes_on_after_a_lost_commit_reply(proxy: CutProxy, prefix: str) -> None:
    """A `StoreUnavailable` commit leaves its outcome unknown; the caller may go on with the
    same `Run`: the commit is sent again under its key before the next step (it stood:
    `Duplicate`), not refused as if another process had moved the run."""
    effects, effect = counted()
    fragile = CountingStore.from_url(proxy.url, prefix=prefix, retries=0)
    assert isinstance(fragile, CountingStore)
    agent = make_agent(STEPS, 5.0, effect)
    try:
        await load_scripts(fragile)
        run = await agent.start(fragile, Progress(), run_id="same-run")
        await run.step()
        proxy.rule = CutRule(COMMIT, contains=f"same-run:{run.record.nonce}:1:t1".encode())
        with pytest.raises(StoreUnavailable):
            await run.step()
        assert proxy.cuts == 1
        await run.until_done()
        await check_run(fragile, "same-run", effects)
        assert fragile.outcomes["Duplicate"] == 1
    finally:
        await fragile.close()


@pytest.mark.parametrize("held", ["request", "reply"])
async def test_a_cancellation_lets_the_commit_in_flight_settle(
    proxy: CutProxy, prefix: str, held: Literal["request", "reply"]
) -> None:
    """The task driving a run is cancelled while a step's commit waits for Redis (the
    command held back before the server, or applied and its reply held back): the commit is
    sent again under its key before the cancellation goes on, so it stands once and this
    `Run` knows it; the same `Run` then finishes without a refusal, each step once."""
    effects, effect = counted()
    store = CountingStore.connect(proxy.url, prefix=prefix)
    agent = make_agent(STEPS, 5.0, effect)
    try:
        await load_scripts(store)
        run = await agent.start(store, Progress(), run_id=f"cancel-{held}")
        await run.step()
        key = f"cancel-{held}:{run.record.nonce}:1:t1".encode()
        proxy.rule = CutRule(COMMIT, contains=key, hold=held)
        driving = asyncio.create_task(run.until_done())
        await proxy.holding.wait()
        driving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await driving
        stored = await store.load(run.run_id)
        assert stored is not None
        assert (run.seq, stored.seq) == (2, 2)  # it stood, and this copy knows
        expected = "Committed" if held == "request" else "Duplicate"
        assert store.outcomes[expected] >= 1
        try:
            await run.until_done()
        except RunTakenOver as refused:  # pragma: no cover - the failure this test catches
            pytest.fail(f"the run was refused after the cancellation: {refused}")
        await check_run(store, run.run_id, effects)
    finally:
        await store.close()


async def test_lost_lease_reply_is_absorbed(proxy: CutProxy, prefix: str) -> None:
    effects, effect = counted()
    store = RedisStore.from_url(proxy.url, prefix=prefix)
    agent = make_agent(STEPS, 5.0, effect)
    try:
        await load_scripts(store)
        run = await agent.start(store, Progress(), run_id="lease-cut")
        proxy.rule = CutRule(LEASE, contains=b"acquire")
        await run.until_done()
        await check_run(store, "lease-cut", effects)
    finally:
        await store.close()


async def test_lost_create_reply_keeps_the_run_listed(proxy: CutProxy, prefix: str) -> None:
    store = RedisStore.from_url(proxy.url, prefix=prefix)
    agent = make_agent(STEPS, 5.0, lambda ctx: None)
    try:
        await load_scripts(store)
        proxy.rule = CutRule(CREATE)
        run = await agent.start(store, Progress(), run_id="create-cut")
        assert proxy.cuts == 1
        assert run.seq == 0
        assert "create-cut" in [r.run_id for r in await store.list_runs()]
    finally:
        await store.close()
