"""Per-step and per-run cost against the floors, measured side by side (issue 17).

In one run, with one client mode (redis-py with hiredis, `decode_responses=True`, one
connection, sequential awaits), on one private redis-server:

1. the floor: raw `EVALSHA` of storage/commit.lua (the keys and args `RedisStore.commit`
   sends) with redis-py's sync client and with its asyncio client;
2. our per-step p50/p99 (`await run.step()` of a chain of no-op tool steps, a 1,000-step
   run, its first step left out): async tool, sync tool inline (`in_thread=False`), sync
   tool with the default;
3. the short-run scenario: 200 runs of 5 steps, each `start` + 5 `step()` + `release()`:
   µs per run, its start, first step, final step and end (the release), and the round trips
   and Redis commands per run, counted: round trips and replies on the client's connections
   (`bench/_counting.py`), and every command the server ran (`INFO commandstats` deltas,
   commands run inside scripts included) read by a separate uncounted client;
4. the same on the embedded store (SQLite file, WAL, `synchronous=NORMAL`) next to a raw
   SQLite floor at the same setting: one `BEGIN IMMEDIATE` transaction of one compare-and-set
   `UPDATE` of the run row and one `INSERT` of the event.

The machine is shared and its floor drifts: in each process every row is measured in
`--rounds` chunks, a chunk of each row per round (side by side), and `--processes` fresh
processes run one after another; the tables give the median over processes.

    python3 bench/runs.py [--processes 5] [--steps 1000] [--runs 200] [--run-steps 5]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python3 bench/runs.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import redis
from pydantic import BaseModel, TypeAdapter

from agents import Agent, tool
from bench._counting import Wire, count_wire
from bench._redis import markdown_table, redis_for
from bench.commit_overhead import machine
from storage import Event, Lease, RedisStore, RunRecord, Store, open_store

LEASE_TTL = 60.0
"""Seconds; the runner renews every ttl/3 = 20 s, so no renewal falls inside a measured run."""
_IGNORED = {"info", "config|resetstat", "config"}
"""The measuring client's own commands, left out of the counts."""
_COMMIT_LUA = files("storage").joinpath("commit.lua").read_text(encoding="utf-8")


class Memory(BaseModel):
    note: str = ""


async def noop(m: Memory) -> None:
    return None


def noop_sync(m: Memory) -> None:
    return None


VARIANTS: dict[str, tuple[Callable[[Memory], Any], dict[str, Any]]] = {
    "async tool": (noop, {}),
    "sync tool inline": (noop_sync, {"in_thread": False}),
    "sync tool, default": (noop_sync, {}),
}


def chain(name: str, steps: int, fn: Callable[[Memory], Any], **options: Any) -> Agent[Memory]:
    """An agent of `steps` no-op tool steps: s0 -> s1 -> ... -> s{steps}."""
    return Agent(
        name=name,
        memory=Memory,
        initial="s0",
        final=f"s{steps}",
        transitions=[tool(f"t{i}", f"s{i}", f"s{i + 1}", fn, **options) for i in range(steps)],
        lease_ttl=LEASE_TTL,
    )


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
        self.keys = [store.key(run_id, part) for part in ("run", "events", "keys")]
        self.run_id = run_id
        self.token = token
        self.seq = 0
        self.event = event_json(run_id)

    def args(self) -> list[Any]:
        seq = self.seq
        self.seq += 1
        return [seq, self.token, f"{self.run_id}:{seq}:t{seq}", f"s{seq + 1}", "running",
                repr(time.time()), "", "", "", self.event]  # fmt: skip


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


def _wire(store: RedisStore) -> Wire:
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
    wire = _wire(async_store)
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


# ------------------------------------------------------------------------------- ours


async def held_run(
    agent: Agent[Memory], store: Store, run_id: str
) -> Callable[[int], Awaitable[list[tuple[int, ...]]]]:
    """A run started and past its first step (it takes the lease): `go(n)` times n more."""
    run = await agent.start(store, Memory(), run_id=run_id)
    await run.step()

    async def go(n: int) -> list[tuple[int, ...]]:
        clock = time.perf_counter_ns
        samples: list[tuple[int, ...]] = []
        for _ in range(n):
            t0 = clock()
            await run.step()
            samples.append((clock() - t0,))
        return samples

    return go


def short_runs(
    agent: Agent[Memory], store: Store, tag: str, run_steps: int
) -> Callable[[int], Awaitable[list[tuple[int, ...]]]]:
    """Runs of start + `run_steps` steps + release, timed in their PARTS."""
    counter = iter(range(10**9))

    async def go(n: int) -> list[tuple[int, ...]]:
        clock = time.perf_counter_ns
        samples: list[tuple[int, ...]] = []
        for _ in range(n):
            t0 = clock()
            run = await agent.start(store, Memory(), run_id=f"{tag}-{next(counter)}")
            t1 = clock()
            await run.step()
            t2 = clock()
            for _ in range(run_steps - 2):
                await run.step()
            t3 = clock()
            await run.step()
            t4 = clock()
            await run.release()
            t5 = clock()
            if run.status != "done":
                raise RuntimeError(f"{run!r} did not finish")
            samples.append((t5 - t0, t1 - t0, t2 - t1, t4 - t3, t5 - t4))
        return samples

    return go


async def ours_phases(
    store: Store, label: str, steps: int, run_steps: int, wire: Wire | None, stats: Stats | None
) -> tuple[Phase, Phase]:
    fn, options = VARIANTS[label]
    kind = "ours embedded" if wire is None else "ours"
    slug = f"{kind}_{label}".replace(" ", "_").replace(",", "")
    long_agent = chain(f"long_{slug}", steps + 1, fn, **options)
    short_agent = chain(f"short_{slug}", run_steps, fn, **options)
    tag = f"{slug}-{os.getpid()}"
    warm = await held_run(long_agent, store, f"warm-{tag}")
    await warm(50)
    await short_runs(short_agent, store, f"warm-{tag}", run_steps)(20)
    return (
        Phase(name=f"{kind}, {label}", go=await held_run(long_agent, store, f"long-{tag}")),
        Phase(name=f"{kind}, {label}", go=short_runs(short_agent, store, f"short-{tag}", run_steps),
              wire=wire, stats=stats),
    )  # fmt: skip


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


async def child(url: str, steps: int, runs: int, run_steps: int, rounds: int) -> dict[str, Any]:
    prefix = f"runs{os.getpid()}"
    store = counting_store(url, prefix)
    stats = Stats(url)
    step_phases, run_phases, sync_client = await redis_floor_phases(
        url, store, runs, run_steps, stats
    )
    for label in VARIANTS:
        long, short = await ours_phases(store, label, steps, run_steps, _wire(store), stats)
        step_phases.append(long)
        run_phases.append(short)
    with tempfile.TemporaryDirectory(prefix="agentfsm-runs-") as tmp:
        floor_long, floor_short, floor_db = sqlite_floor_phases(f"{tmp}/floor.db", run_steps)
        step_phases.append(floor_long)
        run_phases.append(floor_short)
        embedded = open_store(f"sqlite:///{tmp}/store.db")
        for label in ("async tool", "sync tool, default"):
            long, short = await ours_phases(embedded, label, steps, run_steps, None, None)
            step_phases.append(long)
            run_phases.append(short)
        try:
            for r in range(rounds):
                n_steps = steps // rounds + (1 if r < steps % rounds else 0)
                n_runs = runs // rounds + (1 if r < runs % rounds else 0)
                for phase in step_phases:
                    await phase.chunk(n_steps)
                for phase in run_phases:
                    await phase.chunk(n_runs)
        finally:
            await embedded.close()
            floor_db.close()
    results: dict[str, Any] = {
        "step": {p.name: p.step_result() for p in step_phases},
        "runs": {p.name: p.runs_result() for p in run_phases},
        "parser": parser_in_use(store),
    }
    await store.close()
    stats.client.close()
    sync_client.close()
    return results


# ------------------------------------------------------------------------------ report


def median_of(results: list[dict[str, Any]], section: str, row: str, key: str) -> float | None:
    values = [r[section][row][key] for r in results if key in r[section].get(row, {})]
    return statistics.median(values) if values else None


def tables(results: list[dict[str, Any]], run_steps: int) -> str:
    first = results[0]
    steps_head = ["per step (long run)", "p50 µs", "p99 µs", "p50 / floor"]
    runs_head = ["short runs", "µs per run", "/ floor", "start µs", "first step µs",
                 "final step µs", "end µs", "round trips", "commands sent",
                 "commands run"]  # fmt: skip

    def num(v: float | None, fmt: str = "{:,.1f}") -> str:
        return "-" if v is None else fmt.format(v)

    def floor_for(row: str) -> str:
        return (
            "SQLite floor"
            if "embedded" in row or "SQLite" in row
            else ("EVALSHA floor, asyncio client")
        )

    body = []
    for row in first["step"]:
        p50 = median_of(results, "step", row, "p50")
        ref = median_of(results, "step", floor_for(row), "p50")
        ratio = None if p50 is None or not ref else p50 / ref
        body.append([row, num(p50), num(median_of(results, "step", row, "p99")),
                     num(ratio, "{:.2f}x")])  # fmt: skip
    out = [markdown_table(steps_head, body), ""]
    body = []
    for row in first["runs"]:
        per_run = median_of(results, "runs", row, "per_run")
        ref = median_of(results, "runs", floor_for(row), "per_run")
        ratio = None if per_run is None or not ref else per_run / ref
        cells = [row, num(per_run, "{:,.0f}"), num(ratio, "{:.2f}x")]
        cells += [num(median_of(results, "runs", row, k), "{:,.0f}")
                  for k in ("start", "first", "final", "end")]  # fmt: skip
        cells += [num(median_of(results, "runs", row, k), "{:.2f}")
                  for k in ("round_trips", "sent", "commands")]  # fmt: skip
        body.append(cells)
    out.append(markdown_table(runs_head, body))
    return "\n".join(out)


def targets(results: list[dict[str, Any]], run_steps: int) -> list[str]:
    def m(section: str, row: str, key: str) -> float:
        v = median_of(results, section, row, key)
        return float("nan") if v is None else v

    floor = m("step", "EVALSHA floor, asyncio client", "p50")
    lines = []
    for label in VARIANTS:
        r = m("step", f"ours, {label}", "p50") / floor
        lines.append(f"per step <= 1.3x the asyncio floor, {label}: {r:.2f}x"
                     f" -> {'met' if r <= 1.3 else 'MISSED'}")  # fmt: skip
    r = m("step", "ours, sync tool, default", "p50") / m("step", "ours, async tool", "p50")
    lines.append(f"default sync tool <= 1.3x the async tool: {r:.2f}x"
                 f" -> {'met' if r <= 1.3 else 'MISSED'}")  # fmt: skip
    rt = m("runs", "ours, async tool", "round_trips")
    lines.append(f"a {run_steps}-step run <= {run_steps + 1} round trips: {rt:.2f}"
                 f" -> {'met' if rt <= run_steps + 1 else 'MISSED'}")  # fmt: skip
    r = m("runs", "ours, async tool", "per_run") / m("runs", "EVALSHA floor, asyncio client",
                                                      "per_run")  # fmt: skip
    lines.append(f"a run <= 1.5x the floor's µs per run: {r:.2f}x"
                 f" -> {'met' if r <= 1.5 else 'MISSED'}")  # fmt: skip
    r = m("step", "ours embedded, async tool", "p50") / m("step", "SQLite floor", "p50")
    lines.append(f"embedded <= 2x its floor per step: {r:.2f}x -> {'met' if r <= 2 else 'MISSED'}")
    r = m("runs", "ours embedded, async tool", "per_run") / m("runs", "SQLite floor", "per_run")
    lines.append(f"embedded <= 3x its floor per run: {r:.2f}x -> {'met' if r <= 3 else 'MISSED'}")
    return lines


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--processes", type=int, default=5, help="processes, one after another")
    parser.add_argument("--steps", type=int, default=1000, help="steps of the long run")
    parser.add_argument("--runs", type=int, default=200, help="short runs")
    parser.add_argument("--run-steps", type=int, default=5, help="steps per short run")
    parser.add_argument("--rounds", type=int, default=5, help="chunks each phase is cut into")
    parser.add_argument("--url", help="a redis-server of yours (loopback only; its stats reset)")
    parser.add_argument("--json", help="also write the per-process results to this file")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.steps < 2 or args.run_steps < 2 or args.runs < 1 or args.processes < 1:
        parser.error("--steps and --run-steps must be at least 2, --runs and --processes 1")
    if args.child:
        got = asyncio.run(child(args.url, args.steps, args.runs, args.run_steps, args.rounds))
        print(json.dumps(got))
        return
    for line in machine():
        print(line)
    t_start = time.perf_counter()
    results = []
    with redis_for(args.url, parser) as (url, own):
        version = redis.Redis.from_url(url).info("server")["redis_version"]
        print(f"redis-server {version} at {url} ({'ours, no persistence' if own else 'given'});"
              f" {args.processes} processes x (long run of {args.steps} steps,"
              f" {args.runs} runs of {args.run_steps} steps)")  # fmt: skip
        for i in range(args.processes):
            cmd = [sys.executable, "-m", "bench.runs", "--child", "--url", url,
                   "--steps", str(args.steps), "--runs", str(args.runs),
                   "--run-steps", str(args.run_steps), "--rounds", str(args.rounds)]  # fmt: skip
            root = Path(__file__).resolve().parents[1]
            env = {**os.environ, "PYTHONPATH": os.pathsep.join(
                [str(root), *filter(None, [os.environ.get("PYTHONPATH")])])}  # fmt: skip
            done = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
            if done.returncode != 0:
                sys.exit(f"process {i + 1} failed:\n{done.stderr}")
            results.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"process {i + 1}/{args.processes} done", flush=True)
    print(f"reply parser in use: {', '.join(sorted({r['parser'] for r in results}))}")
    print()
    print(tables(results, args.run_steps))
    print()
    for line in targets(results, args.run_steps):
        print(line)
    print(f"\nmedians over {len(results)} processes; total {time.perf_counter() - t_start:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
