"""Throughput of worker processes over one local Redis, beside a bare EVALSHA loop (issue 6).

For 1, 2 and 4 processes, in one run, with the phases interleaved round by round:

1. workers: P processes (`bench/_worker_proc.py`: the library's `statemachine.Worker`, as
   `agentfsm worker` runs it, with a timing `on_event` hook) drive queued runs of a no-op
   agent (`bench/_noop_agent.py`: K async no-op tool steps), up to C runs at once each;
2. baseline: P processes (`bench/_raw_proc.py`) each run C coroutines of bare redis-py asyncio
   that send only the commit EVALSHAs, with the keys and args `RedisStore.commit` sends, for
   the same number of runs and commits.

Reports durable transitions per second (all processes together), the baseline's EVALSHAs per
second, p50/p99 latency per transition, and the most runs one process held at once. Usage,
from the repository root:

    python3 bench/throughput.py [--runs 2000] [--steps 5] [--concurrency 1000]
                                [--processes 1,2,4] [--rounds 3] [--url redis://127.0.0.1:PORT]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python3 bench/throughput.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._redis import markdown_table, redis_for
from bench.commit_overhead import machine
from storage import RedisStore

ROOT = Path(__file__).resolve().parents[1]
AGENT = "noop"
TARGET_RATIO = 0.5
"""Aggregate transitions/s at least this share of the bare EVALSHA loop's, same processes."""
TARGET_IN_FLIGHT = 1000
"""Runs one process holds at once."""


# ---------------------------------------------------------------------------- statistics


def percentile_us(samples: Sequence[int], p: float) -> float:
    """Nearest-rank percentile of nanosecond samples, in microseconds."""
    ordered = sorted(samples)
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(len(ordered) * p / 100))
    return ordered[rank - 1] / 1000


@dataclass(kw_only=True)
class Phase:
    """What the processes of one phase reported."""

    commits: int
    seconds: float
    steps_ns: list[int]
    first_ns: list[int] = field(default_factory=list)
    peaks: list[int] = field(default_factory=list)
    beat_peaks: list[int] = field(default_factory=list)
    cpu: float = 0.0
    """CPU seconds of the phase's processes over their busy window."""
    redis_cpu: float = 0.0
    """CPU seconds redis-server used meanwhile (`INFO cpu`)."""
    busy: float = 0.0
    """CPU seconds the whole machine used meanwhile (/proc/stat), all processes."""
    metered: float = 1.0
    """Seconds over which `redis_cpu` and `busy` were measured."""

    @property
    def rate(self) -> float:
        return self.commits / self.seconds


@dataclass(kw_only=True)
class Results:
    workers: dict[int, list[Phase]] = field(default_factory=dict)
    baseline: dict[int, list[Phase]] = field(default_factory=dict)


# -------------------------------------------------------------------------- processes


def _env(steps: int) -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "AGENTFSM_BENCH_STEPS": str(steps)}


def _spawn(module: str, args: list[str], steps: int, log: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        env=_env(steps),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=log.open("w"),
        text=True,
    )


def _finish(procs: Sequence[subprocess.Popen[str]], logs: Sequence[Path], what: str) -> None:
    for proc, log in zip(procs, logs, strict=True):
        try:
            proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"{what} exited with {proc.returncode}: {log.read_text()[-3000:]}")


class CpuMeter:
    """CPU seconds used by redis-server (`INFO cpu`) and by the whole machine (/proc/stat)
    between `start()` and `stop()`."""

    def __init__(self, store: RedisStore) -> None:
        self.store = store
        self.redis = self.busy = self.wall = 0.0

    async def _redis(self) -> float:
        info: dict[str, Any] = await self.store.client.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    @staticmethod
    def _machine() -> float:
        jiffies = [int(f) for f in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
        busy = sum(jiffies) - jiffies[3] - jiffies[4]  # all but idle and iowait
        return busy / os.sysconf("SC_CLK_TCK")

    async def start(self) -> None:
        self.redis, self.busy, self.wall = await self._redis(), self._machine(), time.time()

    async def stop(self) -> None:
        self.redis, self.busy = await self._redis() - self.redis, self._machine() - self.busy
        self.wall = time.time() - self.wall


async def _clear(store: RedisStore, own_server: bool) -> None:
    if own_server:
        await store.client.flushdb()
        return
    async for key in store.client.scan_iter(match=f"{store.prefix}:*", count=1000):
        await store.client.unlink(key)


async def workers_phase(
    url: str, tmp: Path, *, procs: int, runs: int, steps: int, concurrency: int,
    own_server: bool, pool: str,
) -> Phase:  # fmt: skip
    """`procs` worker processes drive `procs * runs` queued runs of the no-op agent."""
    from bench._noop_agent import Memory, noop

    prefix = f"tpw{secrets.token_hex(3)}"
    store = RedisStore.from_url(f"{url}?prefix={prefix}")
    queue: Any = store.queue
    outs = [tmp / f"{prefix}-{n}.json" for n in range(procs)]
    logs = [tmp / f"{prefix}-{n}.log" for n in range(procs)]
    names = [f"{prefix}-w{n}" for n in range(procs)]
    workers = [
        _spawn(
            "bench._worker_proc",
            [
                f"{url}?prefix={prefix}{pool}",
                str(out),
                "--concurrency",
                str(concurrency),
                "--name",
                name,
            ],
            steps,
            log,
        )
        for out, log, name in zip(outs, logs, names, strict=True)
    ]
    try:
        # Create the runs while the processes start (not timed); queue them all at once.
        ids = [f"{prefix}-{i}" for i in range(procs * runs)]
        limit = asyncio.Semaphore(50)

        async def create(run_id: str) -> None:
            async with limit:
                await noop.start(store, Memory(), run_id=run_id)

        await asyncio.gather(*(create(i) for i in ids))
        await queue.ensure_group([AGENT])
        give_up = time.monotonic() + 60
        while len({b.name for b in await queue.workers()} & set(names)) < procs:
            if time.monotonic() > give_up or any(w.poll() is not None for w in workers):
                raise RuntimeError("the worker processes did not sign on")
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # past each worker's first loop: all wait in XREADGROUP
        key = queue.stream(AGENT)
        pipe = store.client.pipeline(transaction=True)
        for run_id in ids:
            pipe.xadd(key, {"run": run_id, "kind": "run"})  # what RunQueue.enqueue adds
        meter = CpuMeter(store)
        await meter.start()
        queued_at = time.time()
        await pipe.execute()
        # Done when every job is acknowledged (a worker deletes the entries it acknowledges).
        beat_peaks = dict.fromkeys(names, 0)
        next_look = 0.0
        give_up = time.monotonic() + 600
        while await store.client.xlen(key):
            if time.monotonic() > give_up or any(w.poll() is not None for w in workers):
                raise RuntimeError("the workers did not finish the runs")
            if time.monotonic() >= next_look:  # what the heartbeats say (every 2 s)
                for beat in await queue.workers():
                    if beat.name in beat_peaks:
                        beat_peaks[beat.name] = max(beat_peaks[beat.name], len(beat.holding))
                next_look = time.monotonic() + 0.25
            await asyncio.sleep(0.02)
        await meter.stop()
    except BaseException:
        for w in workers:
            w.kill()
            w.communicate()
        raise
    for w in workers:
        w.terminate()
    _finish(workers, logs, "a worker process")
    reports = [json.loads(out.read_text()) for out in outs]
    # Every run done, each with its `steps` commits (read after the timing).
    pipe = store.client.pipeline(transaction=False)
    for run_id in ids:
        pipe.hmget(store.key(run_id, "run"), "seq", "status")
    wrong = [
        (i, got) for i, got in zip(ids, await pipe.execute(), strict=True)
        if got != [str(steps), "done"]
    ]  # fmt: skip
    if wrong:
        raise RuntimeError(f"{len(wrong)} runs not done with {steps} commits, e.g. {wrong[:3]}")
    commits = sum(int(r["commits"]) for r in reports)
    if commits != len(ids) * steps:
        raise RuntimeError(f"{commits} commits seen by the workers, not {len(ids) * steps}")
    await _clear(store, own_server)
    await store.close()
    return Phase(
        commits=commits,
        seconds=max(float(r["last_at"]) for r in reports) - queued_at,
        steps_ns=[x for r in reports for x in r["steps_ns"]],
        first_ns=[x for r in reports for x in r["first_ns"]],
        peaks=[int(r["peak"]) for r in reports],
        beat_peaks=list(beat_peaks.values()),
        cpu=sum(float(r["cpu"]) for r in reports),
        redis_cpu=meter.redis,
        busy=meter.busy,
        metered=meter.wall,
    )


async def baseline_phase(
    url: str, tmp: Path, *, procs: int, runs: int, steps: int, concurrency: int, own_server: bool,
    pool: str,
) -> Phase:  # fmt: skip
    """`procs` bare EVALSHA processes, `runs` runs of `steps` commits each, C at once."""
    prefix = f"tpb{secrets.token_hex(3)}"
    outs = [tmp / f"{prefix}-{n}.json" for n in range(procs)]
    logs = [tmp / f"{prefix}-{n}.log" for n in range(procs)]
    raws = [
        _spawn(
            "bench._raw_proc",
            [
                f"{url}?prefix={prefix}{pool}",
                str(out),
                "--runs",
                str(runs),
                "--steps",
                str(steps),
                "--concurrency",
                str(concurrency),
                "--tag",
                str(n),
            ],
            steps,
            log,
        )
        for n, (out, log) in enumerate(zip(outs, logs, strict=True))
    ]
    meter = CpuMeter(store := RedisStore.from_url(f"{url}?prefix={prefix}"))
    try:
        for proc in raws:  # each has created its runs and taken their leases
            assert proc.stdout is not None
            line = await asyncio.to_thread(proc.stdout.readline)
            if line.strip() != "ready":
                raise RuntimeError("a baseline process did not get ready")
        await meter.start()
        for proc in raws:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
    finally:
        for proc in raws:
            if proc.stdin is not None:
                proc.stdin.close()
                proc.stdin = None
        await asyncio.to_thread(_finish, raws, logs, "a baseline process")
    await meter.stop()
    reports = [json.loads(out.read_text()) for out in outs]
    commits = sum(int(r["commits"]) for r in reports)
    if commits != procs * runs * steps:
        raise RuntimeError(f"{commits} baseline commits, not {procs * runs * steps}")
    await _clear(store, own_server)
    await store.close()
    return Phase(
        commits=commits,
        seconds=max(float(r["last_at"]) for r in reports)
        - min(float(r["first_at"]) for r in reports),
        steps_ns=[x for r in reports for x in r["steps_ns"]],
        cpu=sum(float(r["cpu"]) for r in reports),
        redis_cpu=meter.redis,
        busy=meter.busy,
        metered=meter.wall,
    )


# ------------------------------------------------------------------------------- report


def _span(values: Sequence[int]) -> str:
    return (
        f"{min(values):,}" if min(values) == max(values) else f"{min(values):,} to {max(values):,}"
    )


def report(res: Results, processes: Sequence[int]) -> list[str]:
    head = ["processes", "transitions/s", "baseline EVALSHA/s", "ratio", "p50 µs", "p99 µs",
            "baseline p50 µs", "baseline p99 µs", "first step p50 µs",
            "peak runs in flight per process"]  # fmt: skip
    body = []
    for p in processes:
        ws, bs = res.workers[p], res.baseline[p]
        steps = [x for w in ws for x in w.steps_ns]
        raw = [x for b in bs for x in b.steps_ns]
        body.append(
            [
                str(p),
                f"{statistics.median(w.rate for w in ws):,.0f}",
                f"{statistics.median(b.rate for b in bs):,.0f}",
                f"{statistics.median(w.rate / b.rate for w, b in zip(ws, bs, strict=True)):.2f}",
                f"{percentile_us(steps, 50):,.0f}",
                f"{percentile_us(steps, 99):,.0f}",
                f"{percentile_us(raw, 50):,.0f}",
                f"{percentile_us(raw, 99):,.0f}",
                f"{percentile_us([x for w in ws for x in w.first_ns], 50):,.0f}",
                _span([x for w in ws for x in w.peaks]),
            ]
        )
    widths = [max(len(line[i]) for line in [head, *body]) for i in range(len(head))]

    def fmt(cells: list[str]) -> str:
        return "| " + " | ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 1) + ":" for w in widths) + "|"
    return [fmt(head), rule, *(fmt(b) for b in body)]


def cpu_report(res: Results, processes: Sequence[int]) -> list[str]:
    """Where the CPU went, per transition and in cores, and the ceiling it puts on scaling."""
    cores = os.cpu_count() or 1
    head = ["processes", "side", "their CPU µs/transition", "redis-server CPU µs/transition",
            "cores busy: theirs", "redis-server", "everything else", "machine"]  # fmt: skip
    body = []
    for p in processes:
        for side, phases in (("workers", res.workers[p]), ("baseline", res.baseline[p])):
            per = [(ph.cpu / ph.commits, ph.redis_cpu / ph.commits) for ph in phases]
            use = [(ph.cpu / ph.seconds, ph.redis_cpu / ph.metered, ph.busy / ph.metered)
                   for ph in phases]  # fmt: skip
            mine = statistics.median(u[0] for u in use)
            red = statistics.median(u[1] for u in use)
            busy = statistics.median(u[2] for u in use)
            body.append([
                str(p), side, f"{statistics.median(x[0] for x in per) * 1e6:,.0f}",
                f"{statistics.median(x[1] for x in per) * 1e6:,.0f}", f"{mine:.2f}", f"{red:.2f}",
                f"{max(busy - mine - red, 0):.2f}", f"{busy:.2f} of {cores}",
            ])  # fmt: skip
    lines = markdown_table(head, body).splitlines()
    if 1 in processes and 2 in processes:
        one, two = res.workers[1], res.workers[2]
        rate1 = statistics.median(w.rate for w in one)
        rate2 = statistics.median(w.rate for w in two)
        cpu2 = statistics.median((w.cpu + w.redis_cpu) / w.commits for w in two)
        others = statistics.median(
            max(w.busy / w.metered - w.cpu / w.seconds - w.redis_cpu / w.metered, 0) for w in two
        )
        ceiling = (cores - others) / cpu2
        lines.append("")
        lines.append(
            f"- 2 worker processes: a transition costs {cpu2 * 1e6:,.0f} µs of CPU (workers +"
            f" redis-server); with {cores} cores less {others:.2f} busy with everything else,"
            f" that caps them at {ceiling:,.0f}/s = x{ceiling / rate1:.2f} over 1 process"
            f" ({rate1:,.0f}/s); measured {rate2:,.0f}/s = x{rate2 / rate1:.2f}"
        )
    return lines


def verdicts(res: Results, processes: Sequence[int]) -> list[str]:
    lines = []
    med = {p: statistics.median(w.rate for w in res.workers[p]) for p in processes}
    raw = {p: statistics.median(b.rate for b in res.baseline[p]) for p in processes}
    peak = max(x for p in processes for w in res.workers[p] for x in w.peaks)
    beats = max(x for p in processes for w in res.workers[p] for x in w.beat_peaks)
    ok = peak >= TARGET_IN_FLIGHT
    lines.append(
        f"- runs in flight in one process: peak {peak:,} (heartbeats showed up to {beats:,})"
        f" -> {'meets' if ok else 'MISSES'} the target of {TARGET_IN_FLIGHT:,}"
    )
    for p in processes:
        ratios = [w.rate / b.rate for w, b in zip(res.workers[p], res.baseline[p], strict=True)]
        ratio = statistics.median(ratios)
        lines.append(
            f"- {p} process{'es' if p > 1 else ''}: workers / bare EVALSHA loop ="
            f" {ratio:.2f} (rounds: {', '.join(f'{r:.2f}' for r in ratios)})"
            f" -> {'meets' if ratio >= TARGET_RATIO else 'MISSES'} the target of"
            f" {TARGET_RATIO:g}"
        )
    if 1 in med and 2 in med:
        lines.append(
            f"- 1 -> 2 processes: workers x{med[2] / med[1]:.2f},"
            f" bare EVALSHA loop x{raw[2] / raw[1]:.2f}"
        )
    if 2 in med and 4 in med:
        lines.append(
            f"- 2 -> 4 processes: workers x{med[4] / med[2]:.2f},"
            f" bare EVALSHA loop x{raw[4] / raw[2]:.2f}"
        )
    return lines


# --------------------------------------------------------------------------------- main


async def bench(url: str, args: argparse.Namespace, *, own_server: bool) -> None:
    processes: list[int] = args.processes
    for line in machine():
        print(line)
    store = RedisStore.from_url(url)
    server: dict[str, Any] = await store.client.info("server")
    await store.close()
    print(
        f"redis-server: {server['redis_version']} at {url}"
        f" ({'started by this script, no persistence' if own_server else 'given with --url'})"
    )
    print(
        f"{args.runs:,} runs per process x {args.steps} no-op async tool steps, concurrency"
        f" {args.concurrency} per process, processes {processes}, {args.rounds} round(s)"
        " (phases interleaved)"
    )
    print(
        "connection pool per process: "
        + (
            f"max_connections={args.max_connections} (in the store URL)"
            if args.max_connections
            else "the store's default (500 connections, waiting when all are busy)"
        )
    )
    res = Results()
    t_start = time.perf_counter()
    common: dict[str, Any] = {
        "runs": args.runs, "steps": args.steps, "concurrency": args.concurrency,
        "own_server": own_server,
        "pool": f"&max_connections={args.max_connections}" if args.max_connections else "",
    }  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="agentfsm-bench-tp-") as tmpdir:
        tmp = Path(tmpdir)
        for r in range(args.rounds):
            order = processes if r % 2 == 0 else processes[::-1]
            for p in order:
                phases = ["baseline", "workers"] if r % 2 == 0 else ["workers", "baseline"]
                for what in phases:
                    if what == "workers":
                        got = await workers_phase(url, tmp, procs=p, **common)
                        res.workers.setdefault(p, []).append(got)
                    else:
                        got = await baseline_phase(url, tmp, procs=p, **common)
                        res.baseline.setdefault(p, []).append(got)
                    print(
                        f"round {r + 1}/{args.rounds}, {p} process(es), {what}:"
                        f" {got.commits:,} commits in {got.seconds:.2f} s = {got.rate:,.0f}/s",
                        flush=True,
                    )
    print()
    print("\n".join(report(res, processes)))
    print()
    print("\n".join(cpu_report(res, processes)))
    print()
    print("\n".join(verdicts(res, processes)))
    print(f"\ntotal time {time.perf_counter() - t_start:.1f} s")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--runs", type=int, default=2000, help="runs per process in each phase (default 2000)"
    )
    parser.add_argument("--steps", type=int, default=5, help="steps per run (default 5)")
    parser.add_argument(
        "--concurrency", type=int, default=1000, help="runs (coroutines) per process (1000)"
    )
    parser.add_argument(
        "--processes",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[1, 2, 4],
        help="comma-separated process counts (default 1,2,4)",
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every phase (default 3)")
    parser.add_argument(
        "--max-connections",
        type=int,
        help="the connection pool of every process, given as `?max_connections=` in its store"
        " URL (default: concurrency + 100; 0: the store's default, 500)",
    )
    parser.add_argument(
        "--url",
        help="use this redis-server (redis://127.0.0.1:PORT, loopback only) instead of starting"
        " one; the keys written are deleted",
    )
    args = parser.parse_args(argv)
    if args.max_connections is None:
        args.max_connections = args.concurrency + 100
    if args.runs < 1 or args.steps < 1 or args.concurrency < 1 or args.rounds < 1:
        parser.error("--runs, --steps, --concurrency and --rounds must be at least 1")
    with redis_for(args.url, parser) as (url, own_server):
        asyncio.run(bench(url, args, own_server=own_server))


if __name__ == "__main__":
    main()
