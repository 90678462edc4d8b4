"""What publishing a run's progress on its live channel costs per step (issue 18).

    python3 bench/live_overhead.py [--steps N] [--repeat R] [--url redis://127.0.0.1:PORT]

A chain of N no-op async tool steps, driven one `await run.step()` at a time, three ways on
each backend, interleaved round by round: publishing off (the run's publisher replaced by
one that drops everything: the runner as it was before the live channel), publishing with no
watcher, and publishing while a watcher in another process follows the run
(`bench._live_watcher`, blocking reads of the channel); and on a store that answers at once
(the runner's own CPU, publishing off and on). Rows give the step's µs and, on
Redis, the round trips the driving process sent per step (counted on its connections): the
commit's, and the background publishes' (`Store.publish`: one pipeline per batch).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import JsonValue

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._floors import counting_store, pct, wire_of
from bench._redis import markdown_table, redis_for
from bench.commit_overhead import Memory, StubStore, chain, noop
from statemachine._live import Publisher
from storage import RedisStore, Store, open_store

ROOT = Path(__file__).resolve().parents[1]
MODES = ("publishing off", "publishing, no watcher", "publishing, a watcher")


class Silent(Publisher):
    """Publishes nothing: the baseline."""

    def emit(self, base: int, item: dict[str, JsonValue]) -> None:
        return None


class Counted:
    """Counts `publish` calls of a store (each is one round trip on Redis)."""

    def __init__(self, store: Store) -> None:
        self.calls = 0
        self.items = 0
        inner = store.publish

        async def publish(run_id: str, entries: Sequence[tuple[int, JsonValue]]) -> None:
            self.calls += 1
            self.items += len(entries)
            await inner(run_id, entries)

        store.publish = publish  # type: ignore[method-assign]


async def one_run(
    store: Store, url: str, mode: str, steps: int, counted: Counted, n: int
) -> dict[str, Any]:
    agent = chain(f"live{n}", steps, noop, in_thread=False)
    run = await agent.start(store, Memory(), run_id=f"live-{os.getpid()}-{n}")
    if mode == "publishing off":
        run.live = Silent(store, run.run_id)
    await run.step()  # takes the lease: not timed
    watcher = None
    if mode == "publishing, a watcher":
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        watcher = subprocess.Popen(  # noqa: ASYNC220 (started between timed phases)
            [sys.executable, "-m", "bench._live_watcher", url, run.run_id],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert watcher.stdout is not None
        if watcher.stdout.readline().strip() != "ready":
            raise RuntimeError("the watcher did not start")
    wire = wire_of(store) if isinstance(store, RedisStore) else None
    trips = wire.round_trips if wire else 0
    calls = counted.calls
    samples = []
    for _ in range(steps - 1):
        t0 = time.perf_counter_ns()
        await run.step()
        samples.append(time.perf_counter_ns() - t0)
    await run.live.drain()
    result = {
        "samples": samples,
        "trips": (wire.round_trips - trips) if wire else None,
        "publishes": counted.calls - calls,
    }
    await run.release()
    if watcher is not None:
        out, _ = watcher.communicate(timeout=60)
        result["seen"] = int(out.split()[-1])
    return result


async def measure(url: str, steps: int, repeat: int) -> list[list[str]]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="agentfsm-bench-live-") as folder:
        prefix = f"livebench{os.getpid()}"
        backends: list[tuple[str, Store, str]] = [
            ("no-I/O stub store", StubStore(), ""),
            ("Redis", counting_store(url, prefix), f"{url}?prefix={prefix}"),
            ("embedded", open_store(f"sqlite:///{folder}/live.db"), f"sqlite:///{folder}/live.db"),
        ]
        for name, store, store_url in backends:
            counted = Counted(store)
            got: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
            n = 0
            modes = MODES[:2] if not store_url else MODES  # a stub keeps nothing to watch
            for _ in range(repeat + 1):  # the first round warms up
                for mode in modes:
                    n += 1
                    got[mode].append(await one_run(store, store_url, mode, steps, counted, n))
            base = None
            for mode in modes:
                runs = got[mode][1:]
                samples = [s for r in runs for s in r["samples"]]
                timed = len(samples)
                p50 = pct(samples, 50)
                base = base if base is not None else p50
                trips = (
                    sum(r["trips"] for r in runs) / timed if runs[0]["trips"] is not None else None
                )
                rows.append([
                    f"{name}, {mode}", str(timed), f"{p50:.1f}", f"{pct(samples, 99):.1f}",
                    f"{sum(samples) / timed / 1000:.1f}", f"{p50 - base:+.1f}",
                    "—" if trips is None else f"{trips:.2f}",
                    f"{sum(r['publishes'] for r in runs) / timed:.2f}",
                    str(sum(r.get("seen", 0) for r in runs)) if mode.endswith("watcher") else "—",
                ])  # fmt: skip
            await store.close()
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--url", help="a loopback redis-server to use (default: start one)")
    args = parser.parse_args(argv)
    with redis_for(args.url, parser) as (url, _own):
        rows = asyncio.run(measure(url, args.steps, args.repeat))
    head = ["measurement", "n", "p50 µs", "p99 µs", "mean µs", "p50 vs off",
            "round trips / step", "publishes / step", "items seen"]  # fmt: skip
    print(markdown_table(head, rows))


if __name__ == "__main__":
    main()
