"""Per-step and per-run cost against the floors, measured side by side (issue 17).

In one run, with one client mode (redis-py with hiredis, `decode_responses=True`, one
connection, sequential awaits), on one private redis-server:

1. the floor: raw `EVALSHA` of the commit script (the keys and args `RedisStore.commit`
   sends) with redis-py's sync client and with its asyncio client;
2. our per-step p50/p99 (`await run.step()` of a chain of no-op tool steps, a 1,000-step
   run, its first step left out): async tool, sync tool inline (`in_thread=False`), sync
   tool with the default;
3. the short-run scenario: 200 runs of 5 steps, each `start(hold=True)` (the lease taken with
   the run) + 5 `step()` + `release()` (nothing left to give back: the final commit did):
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
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python3 bench/runs.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import redis
from pydantic import BaseModel

from agents import Agent, tool
from bench._counting import Wire
from bench._floors import (
    LEASE_TTL,
    Phase,
    Stats,
    counting_store,
    parser_in_use,
    redis_floor_phases,
    sqlite_floor_phases,
    wire_of,
)
from bench._redis import markdown_table, redis_for
from bench.commit_overhead import machine
from storage import Store, open_store


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
            run = await agent.start(store, Memory(), run_id=f"{tag}-{next(counter)}", hold=True)
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


async def child(url: str, steps: int, runs: int, run_steps: int, rounds: int) -> dict[str, Any]:
    prefix = f"runs{os.getpid()}"
    store = counting_store(url, prefix)
    stats = Stats(url)
    step_phases, run_phases, sync_client = await redis_floor_phases(
        url, store, runs, run_steps, stats
    )
    for label in VARIANTS:
        long, short = await ours_phases(store, label, steps, run_steps, wire_of(store), stats)
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
