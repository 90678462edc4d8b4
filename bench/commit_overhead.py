"""What a durable transition costs over the Redis round trip it cannot avoid.

Measures, side by side in one run and with one client (redis-py asyncio, hiredis,
`decode_responses=True`, one connection, sequential awaits):

1. `PING`: the loopback round-trip floor;
2. one raw `EVALSHA` of the commit script (the registered script, with the keys and args
   `RedisStore.commit` sends), seq after seq on one run holding a lease; and the same through
   `RedisStore.commit` (event encoding included);
3. one full transition through the runner (`await run.step()`) of an `agents.Agent` whose
   table is a chain of no-op tool steps s0 -> s1 -> ... -> sN: async no-op, sync no-op inline
   (`in_thread=False`), sync no-op in a worker thread (the default);
4. the async variant on the embedded store (`sqlite:///<tmpdir>/bench.db`), when it exists.

It also counts, with `INFO commandstats`, the Redis commands each transition sends (target:
exactly one, the EVALSHA). Usage, from the repository root:

    python3 bench/commit_overhead.py [--steps 1000] [--repeat 3] [--url redis://127.0.0.1:PORT]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib
import importlib.metadata
import math
import os
import platform
import secrets
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.resources import files
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python3 bench/commit_overhead.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import redis.utils
from pydantic import BaseModel, JsonValue, TypeAdapter

from agents import Agent, tool
from bench._redis import markdown_table, redis_for
from storage import (
    CommitOutcome,
    Committed,
    Event,
    Lease,
    LeaseHeld,
    RedisStore,
    RunRecord,
    RunStatus,
    StorageError,
    Store,
    open_store,
)
from storage._durability import Durability
from storage.base import LiveEntry, ScopeCharge

LEASE_TTL = 60.0
"""Seconds; the runner renews every ttl/3 = 20 s, so no renewal falls inside a measured run."""

TARGET_RATIO = 2.0
"""A durable transition may cost at most this many raw EVALSHA round trips (p50)."""

_IGNORED = {"info", "config|resetstat", "config"}
"""Our own measuring commands, left out of the counts."""


class Memory(BaseModel):
    note: str = ""


async def noop(m: Memory) -> None:
    return None


def noop_sync(m: Memory) -> None:
    return None


def chain(name: str, steps: int, fn: Callable[[Memory], Any], *, in_thread: bool) -> Agent[Memory]:
    """An agent of `steps` no-op tool steps: s0 -> s1 -> ... -> s{steps}."""
    return Agent(
        name=name,
        memory=Memory,
        initial="s0",
        final=f"s{steps}",
        transitions=[
            tool(f"t{i}", f"s{i}", f"s{i + 1}", fn, in_thread=in_thread) for i in range(steps)
        ],
        lease_ttl=LEASE_TTL,
    )


# ---------------------------------------------------------------------------- statistics


@dataclass(frozen=True, kw_only=True, slots=True)
class Row:
    name: str
    samples_ns: Sequence[int]

    def percentile(self, p: float) -> float:
        """Nearest-rank percentile, in microseconds."""
        ordered = sorted(self.samples_ns)
        rank = max(1, math.ceil(len(ordered) * p / 100))
        return ordered[rank - 1] / 1000

    @property
    def mean_us(self) -> float:
        return sum(self.samples_ns) / len(self.samples_ns) / 1000

    @property
    def ops(self) -> float:
        return len(self.samples_ns) / (sum(self.samples_ns) / 1e9)


def table(rows: Sequence[Row], reference: Row) -> str:
    """An aligned Markdown table (readable in a terminal, pasteable into README.md)."""
    head = ["measurement", "n", "p50 µs", "p99 µs", "mean µs", "ops/s", "p50 / EVALSHA p50"]
    ref = reference.percentile(50)
    body = [
        [
            r.name,
            str(len(r.samples_ns)),
            f"{r.percentile(50):.1f}",
            f"{r.percentile(99):.1f}",
            f"{r.mean_us:.1f}",
            f"{r.ops:,.0f}",
            f"{r.percentile(50) / ref:.2f}x",
        ]
        for r in rows
    ]
    return markdown_table(head, body)


# ------------------------------------------------------------------------ command counting


async def command_calls(store: RedisStore) -> Counter[str]:
    """Calls per command since the last CONFIG RESETSTAT (commands run inside scripts count
    too: Redis 7 does not tell them apart), our own INFO / CONFIG left out."""
    info: dict[str, Any] = await store.client.info("commandstats")
    calls: Counter[str] = Counter()
    for key, value in info.items():
        name = key.removeprefix("cmdstat_")
        if name not in _IGNORED:
            calls[name] = int(value["calls"])
    return calls


async def reset_stats(store: RedisStore) -> None:
    await store.client.config_resetstat()


def top_level(calls: Counter[str], scripts: Sequence[tuple[int, Counter[str]]]) -> Counter[str]:
    """The commands clients sent: `calls` minus what each script ran inside (`times` x its
    profile, measured in isolation). What remains is one round trip per call."""
    left = Counter(calls)
    for times, profile in scripts:
        for name, n in profile.items():
            left[name] -= times * n
    return Counter({k: v for k, v in left.items() if v != 0})


def per(counts: Counter[str], n: int) -> str:
    return ", ".join(f"{k} {v / n:.3f}" for k, v in sorted(counts.items())) or "none"


# ------------------------------------------------------------------------------- phases


async def timed(op: Callable[[], Awaitable[object]], n: int) -> list[int]:
    gc.collect()
    samples = []
    clock = time.perf_counter_ns
    for _ in range(n):
        t0 = clock()
        await op()
        samples.append(clock() - t0)
    return samples


class RawRun:
    """One run committed to seq after seq without the runner: raw EVALSHA, and the store."""

    def __init__(self, store: RedisStore, run_id: str) -> None:
        self.store = store
        self.run_id = run_id
        self.keys = store.commit_keys(run_id)
        self.script = store.client.register_script(
            files("storage.redis").joinpath("scripts", "commit.lua").read_text(encoding="utf-8")
        )
        self.seq = 0
        self.token = 0
        self.owner = f"bench:{os.getpid()}"
        # A representative event, encoded once: what the runner sends for a no-op tool step.
        self.event_json = TypeAdapter(Event).dump_json(self._event(5)).decode()

    def _event(self, seq: int) -> Event:
        at = time.time()
        return Event(
            seq=seq,
            trigger=f"t{seq - 1}",
            kind="tool",
            source=f"s{seq - 1}",
            dest=f"s{seq}",
            status="running",
            key=f"{self.run_id}:{seq - 1}:t{seq - 1}",
            started_at=at,
            ended_at=at,
            worker=self.owner,
        )

    async def create(self) -> Counter[str]:
        """Create the run and take its lease; return the lease script's inner commands."""
        at = time.time()
        record = RunRecord(
            run_id=self.run_id,
            agent="bench_raw",
            version=1,
            state="s0",
            seq=0,
            status="running",
            memory=Memory().model_dump(mode="json"),
            created_at=at,
            updated_at=at,
        )
        await self.store.create(record)
        # Take, give back and take again: the first call loads lease.lua (NOSCRIPT, SCRIPT
        # LOAD, EVALSHA again), the second is what a process taking a run does.
        await self.store.release_lease(await self._acquire())
        await reset_stats(self.store)
        lease = await self._acquire()
        profile = await command_calls(self.store)
        self.token = lease.token
        profile["evalsha"] -= 1
        return +profile

    async def _acquire(self) -> Lease:
        lease = await self.store.acquire_lease(self.run_id, self.owner, LEASE_TTL)
        if not isinstance(lease, Lease):
            raise RuntimeError(f"bench run {self.run_id!r} is held by {lease.owner!r}")
        return lease

    async def evalsha(self) -> None:
        seq = self.seq
        reply = await self.script(
            keys=self.keys,
            args=[seq, self.token, f"{self.run_id}:{seq}:t{seq}", f"s{seq + 1}", "running",
                  repr(time.time()), "", "", "", self.event_json, "", ""],
        )  # fmt: skip
        if reply[0] != "ok":
            raise RuntimeError(f"raw commit at seq {seq + 1} answered {reply!r}")
        self.seq = seq + 1

    async def store_commit(self) -> None:
        seq = self.seq
        event = self._event(seq + 1)
        outcome = await self.store.commit(
            self.run_id, expected_seq=seq, token=self.token, event=event
        )
        if not isinstance(outcome, Committed) or outcome.seq != seq + 1:
            raise RuntimeError(f"store commit at seq {seq + 1} answered {outcome!r}")
        self.seq = seq + 1


@dataclass(frozen=True, kw_only=True, slots=True)
class RunnerResult:
    first_ns: int
    """The run's first step: it takes the lease (and, if the run moved, reloads it) first."""
    steps_ns: list[int]
    first_calls: Counter[str]
    steady_calls: Counter[str]


async def drive(
    agent: Agent[Memory], store: Store, run_id: str, steps: int, *, count: bool
) -> RunnerResult:
    """Start a run and time every `await run.step()` until it is done."""
    redis_store = store if count and isinstance(store, RedisStore) else None
    gc.collect()
    run = await agent.start(store, Memory(), run_id=run_id)
    clock = time.perf_counter_ns
    first_calls: Counter[str] = Counter()
    steady_calls: Counter[str] = Counter()
    if redis_store is not None:
        await reset_stats(redis_store)
    t0 = clock()
    await run.step()
    first_ns = clock() - t0
    if redis_store is not None:
        first_calls = await command_calls(redis_store)
    samples = []
    for _ in range(steps - 1):
        t0 = clock()
        await run.step()
        samples.append(clock() - t0)
    if redis_store is not None:
        steady_calls = await command_calls(redis_store) - first_calls
    if run.status != "done" or run.seq != steps:
        raise RuntimeError(f"{run!r} did not finish its {steps} steps")
    await run.release()
    return RunnerResult(
        first_ns=first_ns, steps_ns=samples, first_calls=first_calls, steady_calls=steady_calls
    )


class StubStore:
    """A `storage.Store` that answers at once and keeps nothing but the run record: the
    runner's own CPU per step, with no I/O and no store encoding."""

    durability = Durability(level="primary")

    async def ping(self, within: float) -> None:
        """It is in this process: it answers."""

    @property
    def ledger(self) -> Any:
        raise StorageError("the benchmark's stub store keeps no ledger")

    @property
    def limiter(self) -> Any:
        raise StorageError("the benchmark's stub store keeps no rate limits")

    @property
    def queue(self) -> Any:
        raise StorageError("the benchmark's stub store keeps no run queue")

    def __init__(self) -> None:
        self._runs: dict[str, RunRecord] = {}

    async def create(self, run: RunRecord, *, origin: JsonValue = None) -> RunRecord:
        return self._runs.setdefault(run.run_id, run)

    async def start(
        self,
        run: RunRecord,
        *,
        owner: str,
        ttl: float,
        origin: JsonValue = None,
        live: Sequence[tuple[int, JsonValue]] = (),
    ) -> tuple[RunRecord, Lease | LeaseHeld]:
        return await self.create(run), await self.acquire_lease(run.run_id, owner, ttl)

    async def restore(self, run: RunRecord, events: Sequence[Event]) -> bool:
        return self._runs.setdefault(run.run_id, run) is run

    async def load(self, run_id: str) -> RunRecord | None:
        return self._runs.get(run_id)

    async def commit(
        self,
        run_id: str,
        *,
        expected_seq: int,
        token: int,
        event: Event,
        scope_charge: ScopeCharge | None = None,
        live: Sequence[tuple[int, JsonValue]] = (),
    ) -> CommitOutcome:
        return Committed(seq=event.seq)

    async def history(
        self, run_id: str, from_seq: int = 0, to_seq: int | None = None
    ) -> list[Event]:
        return []

    async def acquire_lease(self, run_id: str, owner: str, ttl: float) -> Lease | LeaseHeld:
        return Lease(run_id=run_id, owner=owner, token=1, ttl=ttl, crashes=0)

    async def renew_lease(self, lease: Lease) -> bool:
        return True

    async def release_lease(self, lease: Lease) -> None:
        return None

    async def list_runs(
        self,
        *,
        agent: str | None = None,
        status: RunStatus | None = None,
        state: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = 100,
        before: tuple[float, str] | None = None,
        id_contains: str | None = None,
    ) -> list[RunRecord]:
        return list(self._runs.values())[:limit]

    async def publish(self, run_id: str, entries: Sequence[tuple[int, JsonValue]]) -> None:
        return None

    async def live(
        self, run_id: str, after: str | None = None, *, wait: float = 0.0, limit: int = 1000
    ) -> list[LiveEntry]:
        return []

    async def gc(self, now: float) -> int:
        return 0

    async def reindex(self) -> int:
        return len(self._runs)

    async def due(self, now: float, *, limit: int = 100) -> list[str]:
        return []

    async def close(self) -> None:
        self._runs.clear()


# --------------------------------------------------------------------------------- main


def machine() -> list[str]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {name: importlib.metadata.version(name) for name in ("redis", "hiredis", "pydantic")}
    return [
        f"date: {datetime.now(UTC):%Y-%m-%d %H:%M UTC}",
        f"machine: {platform.system()} {platform.release()}, {cpu}, nproc {os.cpu_count()}",
        f"python: {platform.python_implementation()} {platform.python_version()},"
        f" redis-py {versions['redis']} (hiredis {versions['hiredis']},"
        f" parser in use: {'hiredis' if redis.utils.HIREDIS_AVAILABLE else 'python'}),"
        f" pydantic {versions['pydantic']}",
    ]


def embedded_available() -> bool:
    try:
        importlib.import_module("storage.embedded")
    except ImportError:
        return False
    return True


VARIANTS: list[tuple[str, str, Callable[[Memory], Any], bool]] = [
    ("async no-op", "bench_async", noop, False),
    ("sync no-op inline", "bench_sync_inline", noop_sync, False),
    ("sync no-op in thread", "bench_sync_thread", noop_sync, True),
]


@dataclass(kw_only=True)
class Results:
    samples: dict[str, list[int]] = field(default_factory=dict)
    """Row name -> one duration per operation (ns); runner rows leave out each run's first step."""
    firsts: dict[str, list[int]] = field(default_factory=dict)
    calls_first: dict[str, Counter[str]] = field(default_factory=dict)
    calls_steady: dict[str, Counter[str]] = field(default_factory=dict)
    commit_profile: Counter[str] = field(default_factory=Counter)
    lease_profile: Counter[str] = field(default_factory=Counter)
    embedded: str = "not available (storage.embedded does not exist yet)"

    def add(self, name: str, values: list[int]) -> None:
        self.samples.setdefault(name, []).extend(values)


async def measure(store: RedisStore, steps: int, repeat: int, tmpdir: str) -> Results:
    """Every phase, once to warm up, then `repeat` rounds with the phases interleaved (the
    machine's floor drifts: only numbers taken side by side compare)."""
    res = Results()
    print("declaring the agents ...", flush=True)
    agents = [(label, chain(name, steps, fn, in_thread=t)) for label, name, fn, t in VARIANTS]
    embedded: Store | None = None
    if embedded_available():
        embedded = open_store(f"sqlite:///{tmpdir}/bench.db")
        res.embedded = f"{type(embedded).__name__} at {tmpdir}/bench.db"

    raw = RawRun(store, "raw")
    res.lease_profile = await raw.create()
    # What commit.lua runs inside, per call (INFO commandstats counts those too); the first
    # call loads the script.
    await raw.evalsha()
    await reset_stats(store)
    await raw.evalsha()
    profile = await command_calls(store)
    profile["evalsha"] -= 1
    res.commit_profile = +profile

    async def one_round(tag: str, *, keep: bool) -> None:
        nonlocal embedded
        ping_ns = await timed(store.client.ping, steps)
        evalsha_ns = await timed(raw.evalsha, steps)
        commit_ns = await timed(raw.store_commit, steps)
        if keep:
            res.add("PING", ping_ns)
            res.add("EVALSHA commit.lua (raw)", evalsha_ns)
            res.add("RedisStore.commit", commit_ns)
        for label, agent in agents:
            got = await drive(agent, store, f"{agent.name}-{tag}", steps, count=keep)
            if keep:
                res.add(f"run.step(), Redis, {label}", got.steps_ns)
                res.firsts.setdefault(label, []).append(got.first_ns)
                res.calls_first[label] = res.calls_first.get(label, Counter()) + got.first_calls
                res.calls_steady[label] = res.calls_steady.get(label, Counter()) + got.steady_calls
        label, agent = agents[0]
        got = await drive(agent, StubStore(), f"{agent.name}-{tag}", steps, count=False)
        if keep:
            res.add(f"run.step(), no-I/O stub store, {label}", got.steps_ns)
        if embedded is not None:
            try:
                got = await drive(agent, embedded, f"{agent.name}-{tag}", steps, count=False)
            except Exception as exc:  # someone is writing it right now: report, go on
                res.embedded = f"failed: {type(exc).__name__}: {exc}"
                await embedded.close()
                embedded = None
                return
            if keep:
                res.add(f"run.step(), embedded, {label}", got.steps_ns)
                res.firsts.setdefault(f"embedded, {label}", []).append(got.first_ns)

    try:
        print("warming up ...", flush=True)
        await one_round("warm", keep=False)
        for r in range(repeat):
            print(f"round {r + 1}/{repeat} ...", flush=True)
            await one_round(str(r), keep=True)
    finally:
        if embedded is not None:
            await embedded.close()
    return res


def report(res: Results, steps: int, repeat: int) -> None:
    rows = [Row(name=name, samples_ns=values) for name, values in res.samples.items()]
    reference = next(r for r in rows if r.name.startswith("EVALSHA"))
    print()
    print(table(rows, reference))
    print()
    print(f"embedded store: {res.embedded}")
    ref = reference.percentile(50)
    print(f"durable transition p50 / raw EVALSHA p50 (target <= {TARGET_RATIO:g}x):")
    for row in rows:
        if row.name.startswith("run.step(), Redis"):
            ratio = row.percentile(50) / ref
            verdict = "meets" if ratio <= TARGET_RATIO else "MISSES"
            print(
                f"  {row.name.removeprefix('run.step(), Redis, '):<22} {ratio:5.2f}x"
                f"  {verdict} the target  (+{row.percentile(50) - ref:.1f} µs over the EVALSHA)"
            )
    print(
        "first step of each run (left out of the rows above: it takes the lease and reloads"
        " the run before its commit), median µs:"
    )
    for label, values in res.firsts.items():
        print(f"  {label:<31} {sorted(values)[len(values) // 2] / 1000:8.1f}")

    print()
    print(
        "Redis round trips per transition (INFO commandstats, CONFIG RESETSTAT before each run;"
        " Redis also counts the commands a script runs inside: they are subtracted with the"
        " scripts' profiles, measured in isolation in this run):"
    )
    print(f"  inside commit.lua, per EVALSHA: {per(res.commit_profile, 1)}")
    print(f"  inside lease.lua acquire:       {per(res.lease_profile, 1)}")
    n_steady = repeat * (steps - 1)
    for label, steady in res.calls_steady.items():
        sent = top_level(steady, [(n_steady, res.commit_profile)])
        first = top_level(
            res.calls_first[label], [(repeat, res.commit_profile), (repeat, res.lease_profile)]
        )
        verdict = "meets" if sent == Counter({"evalsha": n_steady}) else "MISSES"
        print(
            f"  {label:<22} steady state: {sum(sent.values()) / n_steady:.3f}"
            f" ({per(sent, n_steady)}) -> {verdict} the target of exactly 1;"
            f" first step: {sum(first.values()) / repeat:.0f} ({per(first, repeat)})"
        )


async def bench(url: str, steps: int, repeat: int, *, own_server: bool) -> None:
    for line in machine():
        print(line)
    prefix = f"bench{secrets.token_hex(3)}"
    store = RedisStore.from_url(url, prefix=prefix)
    try:
        server: dict[str, Any] = await store.client.info("server")
        print(
            f"redis-server: {server['redis_version']} at {url}"
            f" ({'started by this script, no persistence' if own_server else 'given with --url'})"
        )
        print(
            f"steps per run: {steps}, measured rounds: {repeat} (phases interleaved per round),"
            f" lease_ttl {LEASE_TTL:g} s (renewal every {LEASE_TTL / 3:g} s: none during a run)"
        )
        t_start = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="agentfsm-bench-") as tmpdir:
            res = await measure(store, steps, repeat, tmpdir)
        report(res, steps, repeat)
        print(f"\ntotal time {time.perf_counter() - t_start:.1f} s")
    finally:
        if not own_server:  # leave a server we were given as we found it
            async for key in store.client.scan_iter(match=f"{prefix}:*", count=1000):
                await store.client.unlink(key)
        await store.close()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--steps", type=int, default=1000, help="steps per run (default 1000)")
    parser.add_argument(
        "--repeat", type=int, default=3, help="measured rounds, each of every phase (default 3)"
    )
    parser.add_argument(
        "--url",
        help="use this redis-server (redis://127.0.0.1:PORT, loopback only) instead of starting"
        " one; its command statistics are reset (CONFIG RESETSTAT)",
    )
    args = parser.parse_args(argv)
    if args.steps < 2 or args.repeat < 1:
        parser.error("--steps must be at least 2 and --repeat at least 1")
    with redis_for(args.url, parser) as (url, own_server):
        asyncio.run(bench(url, args.steps, args.repeat, own_server=own_server))


if __name__ == "__main__":
    main()
