"""What tracing costs per transition: `run.step()` with no OpenTelemetry SDK, with an SDK
that samples nothing, and with an SDK that records every span (exported in batches to an
exporter that drops them, so the export's I/O is not counted).

Each mode runs in a process of its own (a tracer provider is set once per process), the
modes interleaved round by round; each child drives runs of a chain of no-op async tool
steps and times every `await run.step()` but each run's first (which takes the lease).
The `hook alone` rows time just the two calls the runner makes per step (`_fire`'s span and
`_commit`'s, which joins it) around nothing. Usage, from the repository root:

    python3 bench/tracing.py [--steps 500] [--repeat 3] [--url redis://127.0.0.1:PORT]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python3 bench/tracing.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._redis import markdown_table, redis_for

ROOT = Path(__file__).resolve().parents[1]
MODES = ("off", "sampled out", "on")
"""No SDK (the API's proxy provider); an SDK whose sampler drops every trace; an SDK that
records every span (BatchSpanProcessor, dropping exporter)."""
HOOK_CALLS = 20_000


def _configure(mode: str) -> None:
    if mode == "off":
        return
    from opentelemetry import trace
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

    class Drop(SpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    if mode == "sampled out":
        provider = TracerProvider(sampler=ALWAYS_OFF)  # not parent-based: runs are sampled
    else:
        provider = TracerProvider()
        provider.add_span_processor(BatchSpanProcessor(Drop()))
    trace.set_tracer_provider(provider)


async def _steps(url: str, steps: int, runs: int) -> list[float]:
    """µs of each `run.step()` after each run's first."""
    from pydantic import BaseModel

    from agents import Agent, tool
    from storage import open_store

    class Memory(BaseModel):
        note: str = ""

    async def nothing(m: Memory) -> None:
        return None

    chain = Agent(
        name="traced_chain", memory=Memory, initial="s0", final=f"s{steps}", lease_ttl=60.0,
        transitions=[tool(f"t{i}", f"s{i}", f"s{i + 1}", nothing) for i in range(steps)],
    )  # fmt: skip
    store = open_store(url, prefix=f"bench-tracing-{secrets.token_hex(4)}")
    samples: list[float] = []
    for n in range(runs + 1):  # the first run warms up
        run = await chain.start(store, Memory(), run_id=f"r{n}")
        await run.step()
        for _ in range(steps - 1):
            t0 = time.perf_counter_ns()
            await run.step()
            if n:
                samples.append((time.perf_counter_ns() - t0) / 1000)
        await run.release()
    await store.close()
    return samples


def _hook() -> float:
    """µs per step of the runner's two tracing calls alone (a span and its joined commit)."""
    from statemachine._tracing import transition_span
    from storage import Event, RunRecord

    record = RunRecord(
        run_id="h", agent="hook", version=1, state="s0", seq=0, status="running", memory={},
        created_at=0.0, updated_at=0.0, trace=f"00-{'1' * 32}-{'2' * 16}-01",
    )  # fmt: skip
    event = Event(seq=1, trigger="t", kind="tool", source="s0", dest="s1", status="running",
                  key="k")  # fmt: skip
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter_ns()
        for _ in range(HOOK_CALLS):
            # _fire's span, and _commit's (which joins it)
            with transition_span(record, "t", "tool"), transition_span(record, "t", "tool") as s:
                s.committed(event)
        best = min(best, (time.perf_counter_ns() - t0) / 1000 / HOOK_CALLS)
    return best


def child(mode: str, url: str, steps: int, runs: int) -> dict[str, Any]:
    _configure(mode)
    return {"steps": asyncio.run(_steps(url, steps, runs)), "hook": _hook()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=500, help="steps per run")
    parser.add_argument("--runs", type=int, default=2, help="measured runs per child")
    parser.add_argument("--repeat", type=int, default=3, help="rounds of every mode")
    parser.add_argument("--url", help="a loopback redis-server to use (default: start one)")
    parser.add_argument("--child", nargs=2, metavar=("MODE", "URL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1], args.steps, args.runs)))
        return
    started = time.monotonic()
    with redis_for(args.url, parser) as (redis_url, _):
        stores = {"memory://": "memory://", "Redis": redis_url}
        steps: dict[tuple[str, str], list[float]] = {}
        hooks: dict[str, list[float]] = {}
        for _ in range(args.repeat):
            for store, url in stores.items():
                for mode in MODES:
                    out = subprocess.run(
                        [sys.executable, "-m", "bench.tracing", "--steps", str(args.steps),
                         "--runs", str(args.runs), "--child", mode, url],
                        cwd=ROOT, capture_output=True, text=True, check=True,
                        env={**os.environ, "PYTHONPATH": str(ROOT)},
                    )  # fmt: skip
                    got = json.loads(out.stdout)
                    steps.setdefault((store, mode), []).extend(got["steps"])
                    hooks.setdefault(mode, []).append(got["hook"])
    body = []
    for store in stores:
        base = statistics.median(steps[(store, "off")])
        for mode in MODES:
            xs = sorted(steps[(store, mode)])
            p50 = statistics.median(xs)
            body.append([
                f"run.step(), {store}, tracing {mode}", f"{len(xs)}", f"{p50:.1f}",
                f"{xs[int(len(xs) * 0.99) - 1]:.1f}", f"{statistics.fmean(xs):.1f}",
                f"{p50 - base:+.1f}",
            ])  # fmt: skip
    for mode in MODES:
        best = min(hooks[mode])
        body.append([f"hook alone, tracing {mode}", f"{HOOK_CALLS}", f"{best:.2f}", "", "", ""])
    print(
        f"{platform.python_implementation()} {platform.python_version()},"
        f" {os.cpu_count()} cpus; {args.steps} steps per run, {args.runs} runs per child,"
        f" {args.repeat} rounds; {time.monotonic() - started:.1f} s"
    )
    print(markdown_table(["measurement", "n", "p50 µs", "p99 µs", "mean µs", "p50 vs off"], body))


if __name__ == "__main__":
    main()
