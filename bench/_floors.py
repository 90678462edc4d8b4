"""The floors `bench/runs.py` measures against, and its measuring kit.

Raw EVALSHAs of the commit script (redis-py sync and asyncio clients), a raw SQLite WAL commit,
`Phase` (one table row measured in chunks, side by side with the others), and the counters of
round trips (`bench/_counting.py`) and of the commands a private redis-server ran (`Stats`).
"""

from __future__ import annotations

import gc
import os
import sqlite3
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from importlib.resources import files
from typing import Any

import redis
from pydantic import TypeAdapter

from bench._counting import Wire, count_wire
from storage import Event, Lease, RedisStore, RunRecord

LEASE_TTL = 60.0
"""Seconds; the runner renews every ttl/3 = 20 s, so no renewal falls inside a measured run."""
_IGNORED = {"info", "config|resetstat", "config"}
"""The measuring client's own commands, left out of the counts."""
_COMMIT_LUA = files("storage.redis").joinpath("scripts", "commit.lua").read_text(encoding="utf-8")


def pct(samples: Sequence[int], p: float) -> float:
    """Nearest-rank percentile of nanosecond samples, in µs."""
    ordered = sorted(samples)
    rank = max(1, -(-len(ordered) * p // 100))
    return ordered[int(rank) - 1] / 1000


def summary(samples: Sequence[int]) -> dict[str, float]:
    return {"p50": pct(samples, 50), "p99": pct(samples, 99)}


def event_json(run_id: str) -> str:
    """A representative event, as the runner sends it for a no-op tool step."""
    at = time.time()
    event = Event(
        seq=5, trigger="t4", kind="tool", source="s4", dest="s5", status="running",
        key=f"{run_id}:4:t4", started_at=at, ended_at=at, worker=f"bench:{os.getpid()}:abcdef",
        step="noop",
    )  # fmt: skip
    return TypeAdapter(Event).dump_json(event, exclude_defaults=True).decode()


# ------------------------------------------------------------------------- Redis floors


class Floor:
    """Runs committed seq after seq with raw EVALSHAs of commit.lua, as RedisStore sends them."""

    def __init__(self, store: RedisStore, run_id: str, token: int) -> None:
        self.keys = store.commit_keys(run_id)
        self.run_id = run_id
        self.token = token
        self.seq = 0
        self.event = event_json(run_id)

    def args(self) -> list[Any]:
        seq = self.seq
        self.seq += 1
        return [seq, self.token, f"{self.run_id}:{seq}:t{seq}", f"s{seq + 1}", "running",
                repr(time.time()), "", "", "", self.event, "", ""]  # fmt: skip


async def new_floor_runs(store: RedisStore, n: int, tag: str) -> list[Floor]:
    """`n` runs created and leased through the store (not timed)."""
    runs = []
    for i in range(n):
        at = time.time()
        run_id = f"floor-{tag}-{i}"
        await store.create(
            RunRecord(run_id=run_id, agent="floor", version=1, state="s0", seq=0,
                      status="running", memory={"note": ""}, created_at=at, updated_at=at)
        )  # fmt: skip
        lease = await store.acquire_lease(run_id, f"bench:{os.getpid()}", LEASE_TTL)
        assert isinstance(lease, Lease)
        runs.append(Floor(store, run_id, lease.token))
    return runs


def sync_evalsha(client: redis.Redis, script: Any, floor: Floor) -> None:
    reply = script(keys=floor.keys, args=floor.args(), client=client)
    if reply[0] != "ok":
        raise RuntimeError(f"raw commit answered {reply!r}")


async def async_evalsha(script: Any, floor: Floor) -> None:
    reply = await script(keys=floor.keys, args=floor.args())
    if reply[0] != "ok":
        raise RuntimeError(f"raw commit answered {reply!r}")


class Stats:
    """Every command the server ran since `reset()` (INFO commandstats), by an uncounted
    client of its own."""

    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(url, decode_responses=True)

    def reset(self) -> None:
        self.client.config_resetstat()

    def calls(self) -> int:
        info: dict[str, Any] = self.client.info("commandstats")
        return sum(
            int(v["calls"]) for k, v in info.items() if k.removeprefix("cmdstat_") not in _IGNORED
        )


_WIRES: dict[int, Wire] = {}


def wire_of(store: RedisStore) -> Wire:
    """The counter installed on the store's pool (one per store)."""
    return _WIRES[id(store)]


def counting_store(url: str, prefix: str) -> RedisStore:
    store = RedisStore.from_url(url, prefix=prefix)
    client: Any = store.client  # standalone: it has a pool
    _WIRES[id(store)] = count_wire(client.connection_pool)
    return store


PARTS = ("per_run", "start", "first", "final", "end")
"""What a short run's timing is split into: all of it, `start`, its first step (takes the
lease), its final step, and the release at the end."""


@dataclass(kw_only=True)
class Phase:
    """One row of a table: `go(n)` does n more operations (steps, or short runs) and gives
    their timings; phases run a chunk each per round, so rows are measured side by side."""

    name: str
    go: Callable[[int], Awaitable[list[tuple[int, ...]]]]
    wire: Wire | None = None
    stats: Stats | None = None
    samples: list[tuple[int, ...]] = field(default_factory=list)
    round_trips: int = 0
    sent: int = 0
    commands: int = 0

    async def chunk(self, n: int) -> None:
        if self.wire is not None:
            self.wire.reset()
        if self.stats is not None:
            self.stats.reset()
        gc.collect()
        self.samples += await self.go(n)
        if self.wire is not None:
            self.round_trips += self.wire.round_trips
            self.sent += self.wire.commands
        if self.stats is not None:
            self.commands += self.stats.calls()

    def step_result(self) -> dict[str, float]:
        return summary([s[0] for s in self.samples])

    def runs_result(self) -> dict[str, float]:
        n = len(self.samples)
        out = {
            name: statistics.median(s[i] for s in self.samples) / 1000
            for i, name in enumerate(PARTS[: len(self.samples[0])])
        }
        if self.wire is not None:
            out["round_trips"] = self.round_trips / n
            out["sent"] = self.sent / n
        if self.stats is not None:
            out["commands"] = self.commands / n
        return out


def timed_calls(
    op: Callable[[], Awaitable[object]],
) -> Callable[[int], Awaitable[list[tuple[int, ...]]]]:
    async def go(n: int) -> list[tuple[int, ...]]:
        clock = time.perf_counter_ns
        samples: list[tuple[int, ...]] = []
        for _ in range(n):
            t0 = clock()
            await op()
            samples.append((clock() - t0,))
        return samples

    return go


def timed_floor_runs(
    runs: list[Floor], run_steps: int, op: Callable[[Floor], Awaitable[object]]
) -> Callable[[int], Awaitable[list[tuple[int, ...]]]]:
    left = iter(runs)

    async def go(n: int) -> list[tuple[int, ...]]:
        clock = time.perf_counter_ns
        samples: list[tuple[int, ...]] = []
        for _ in range(n):
            floor = next(left)
            t0 = clock()
            for _ in range(run_steps):
                await op(floor)
            samples.append((clock() - t0,))
        return samples

    return go


async def redis_floor_phases(
    url: str, async_store: RedisStore, runs: int, run_steps: int, stats: Stats
) -> tuple[list[Phase], list[Phase], redis.Redis]:
    sync_client = redis.Redis.from_url(url, decode_responses=True)
    sync_wire = count_wire(sync_client.connection_pool)
    sync_script = sync_client.register_script(_COMMIT_LUA)
    async_script = async_store.client.register_script(_COMMIT_LUA)
    wire = wire_of(async_store)
    tag = f"{os.getpid()}"

    async def sync_op(floor: Floor) -> None:
        sync_evalsha(sync_client, sync_script, floor)

    async def async_op(floor: Floor) -> None:
        await async_evalsha(async_script, floor)

    (long_sync,) = await new_floor_runs(async_store, 1, f"{tag}-ls")
    (long_async,) = await new_floor_runs(async_store, 1, f"{tag}-la")
    for _ in range(50):  # warm: load the script, open the connections
        await sync_op(long_sync)
        await async_op(long_async)
    steps = [
        Phase(name="EVALSHA floor, sync client", go=timed_calls(lambda: sync_op(long_sync))),
        Phase(name="EVALSHA floor, asyncio client", go=timed_calls(lambda: async_op(long_async))),
    ]
    short_sync = await new_floor_runs(async_store, runs, f"{tag}-ss")
    short_async = await new_floor_runs(async_store, runs, f"{tag}-sa")
    short = [
        Phase(name="EVALSHA floor, sync client",
              go=timed_floor_runs(short_sync, run_steps, sync_op), wire=sync_wire, stats=stats),
        Phase(name="EVALSHA floor, asyncio client",
              go=timed_floor_runs(short_async, run_steps, async_op), wire=wire, stats=stats),
    ]  # fmt: skip
    return steps, short, sync_client


# --------------------------------------------------------------------------- embedded


def sqlite_floor_phases(path: str, run_steps: int) -> tuple[Phase, Phase, sqlite3.Connection]:
    """The raw SQLite floor: per commit, BEGIN IMMEDIATE, a CAS UPDATE of the run row, an
    INSERT of the event, COMMIT (WAL, synchronous=NORMAL, statements cached by sqlite3)."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("CREATE TABLE runs (run_id TEXT PRIMARY KEY, seq INTEGER, state TEXT,"
               " updated_at REAL)")  # fmt: skip
    db.execute("CREATE TABLE events (run_id TEXT, seq INTEGER, json TEXT,"
               " PRIMARY KEY (run_id, seq)) WITHOUT ROWID")  # fmt: skip
    payload = event_json("floor")
    seqs: dict[str, int] = {}

    def commit(run_id: str) -> None:
        seq = seqs[run_id]
        db.execute("BEGIN IMMEDIATE")
        cur = db.execute(
            "UPDATE runs SET seq = ?, state = ?, updated_at = ? WHERE run_id = ? AND seq = ?",
            (seq + 1, f"s{seq + 1}", time.time(), run_id, seq),
        )
        if cur.rowcount != 1:
            raise RuntimeError("floor CAS failed")
        db.execute("INSERT INTO events VALUES (?, ?, ?)", (run_id, seq + 1, payload))
        db.execute("COMMIT")
        seqs[run_id] = seq + 1

    def new_run(run_id: str) -> str:
        db.execute("INSERT INTO runs VALUES (?, 0, 's0', ?)", (run_id, time.time()))
        seqs[run_id] = 0
        return run_id

    new_run("warm")
    for _ in range(50):
        commit("warm")
    long_id = new_run("long")

    async def one_commit() -> None:
        commit(long_id)

    counter = iter(range(10**9))

    async def go_runs(n: int) -> list[tuple[int, ...]]:
        ids = [new_run(f"short-{next(counter)}") for _ in range(n)]
        clock = time.perf_counter_ns
        samples: list[tuple[int, ...]] = []
        for run_id in ids:
            t0 = clock()
            for _ in range(run_steps):
                commit(run_id)
            samples.append((clock() - t0,))
        return samples

    return (
        Phase(name="SQLite floor", go=timed_calls(one_commit)),
        Phase(name="SQLite floor", go=go_runs),
        db,
    )


# ------------------------------------------------------------------------ one process


def parser_in_use(store: RedisStore) -> str:
    """The reply parser class of the store's connections (hiredis or redis-py's own)."""
    client: Any = store.client
    pool: Any = client.connection_pool
    conns = list(getattr(pool, "_in_use_connections", ())) + list(
        getattr(pool, "_available_connections", ())
    )
    if not conns:
        return "no connection open"
    return type(conns[0]._parser).__name__
