"""Where the start and the end of a short `agent.run` go (issue 30's profile, repeatable).

`bench/user_cost.py` measures a whole run's *start* (call -> first step body starts) and *end*
(last step body ends -> `agent.run` returns); this splits them, on the no-I/O stub store, a
private redis-server and the embedded store, by timing the calls the runner makes in them
(wrapped here, in this process only: `Machine._start`, the store's `start` and its `publish` of
the first step's "started" item for the start, which since the second tuning the store's start
writes itself (no publish: its row shows "-"); the final `commit` and `LeaseKeeper.release`
for the end; since issue 30 the end publishes nothing: a commit carries the live items).
Wrapping adds about a microsecond per wrapped call. The names wrapped are internal: when a
refactoring renames one, its column shows "-".

    python3 bench/run_parts.py [--runs 1000] [--run-steps 5] [--url redis://127.0.0.1:PORT]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python3 bench/run_parts.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._redis import markdown_table, redis_for
from bench.commit_overhead import StubStore
from bench.user_cost import MARKS, Memory, async_tool, chain
from storage import RedisStore, Store, open_store

CALLS: dict[str, list[tuple[int, int]]] = {}
"""(start, end) ns of each wrapped call in the current run, by label."""


def wrap(owner: Any, name: str, label: str) -> None:
    """Time every await of `owner.name` (a coroutine method) under `label`."""
    fn = getattr(owner, name, None)
    if fn is None or getattr(fn, "_timed", False):
        return

    @functools.wraps(fn)
    async def timed(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter_ns()
        try:
            return await fn(*args, **kwargs)
        finally:
            CALLS.setdefault(label, []).append((t0, time.perf_counter_ns()))

    timed._timed = True  # type: ignore[attr-defined]
    setattr(owner, name, timed)


def wrap_runner() -> None:
    from statemachine import _lease, _machine

    wrap(_machine.Machine, "_start", "Machine.start")  # (agent.run calls it, not start)
    wrap(_lease.LeaseKeeper, "release", "release")


PARTS = [
    ("start: call -> first body", "start"),
    ("  Machine.start (all of it)", "machine_start"),
    ("    of which the store's start", "store_start"),
    ("  Machine.start returned -> first body", "to_body"),
    ('    of which the first step\'s "started" item (publish)', "publish"),
    ("end: last body -> return", "end"),
    ("  last body -> final commit called", "to_commit"),
    ("  final commit (the store's)", "commit"),
    ("  commit returned -> release", "to_release"),
    ("  release (lease already given back)", "release"),
    ("  release returned -> agent.run returns", "after_release"),
    ("between step bodies (median in the run)", "gap"),
    ("whole run", "run"),
]


def parts_of(t0: int, t1: int) -> dict[str, float]:
    def span(label: str, i: int = 0) -> tuple[int, int] | None:
        got = CALLS.get(label, [])
        return got[i] if got else None

    out: dict[str, float] = {
        "start": MARKS.starts[0] - t0,
        "end": t1 - MARKS.ends[-1],
        "gap": statistics.median(MARKS.gaps()),
        "run": t1 - t0,
    }
    ms, ss, cm = span("Machine.start"), span("store.start"), span("store.commit", -1)
    rl, pb = span("release"), span("store.publish")
    if ms:
        out |= {"machine_start": ms[1] - ms[0], "to_body": MARKS.starts[0] - ms[1]}
    if ss:
        out["store_start"] = ss[1] - ss[0]
    if cm:
        out |= {"to_commit": cm[0] - MARKS.ends[-1], "commit": cm[1] - cm[0]}
        if rl:
            out["to_release"] = rl[0] - cm[1]
    if rl:
        out |= {"release": rl[1] - rl[0], "after_release": t1 - rl[1]}
    if pb and ms and ms[1] <= pb[0] and pb[1] <= MARKS.starts[0]:
        out["publish"] = pb[1] - pb[0]
    return out


async def measure(store: Store, runs: int, run_steps: int, tag: str) -> dict[str, float]:
    for name, label in (("start", "store.start"), ("commit", "store.commit"),
                        ("publish", "store.publish")):  # fmt: skip
        wrap(type(store), name, label)
    agent = chain(f"parts{run_steps}", run_steps, async_tool)
    for i in range(30):
        await agent.run(store, Memory(), run_id=f"warm-{tag}-{i}")
    rows = []
    for i in range(runs):
        CALLS.clear()
        MARKS.reset()
        t0 = time.perf_counter_ns()
        await agent.run(store, Memory(), run_id=f"parts-{tag}-{i}")
        t1 = time.perf_counter_ns()
        rows.append(parts_of(t0, t1))
    return {
        key: statistics.median(r[key] for r in rows) / 1000
        for _, key in PARTS
        if all(key in r for r in rows)
    }


async def all_stores(url: str, runs: int, run_steps: int) -> list[dict[str, float]]:
    wrap_runner()
    with tempfile.TemporaryDirectory(prefix="agentfsm-run-parts-") as tmp:
        redis_store = RedisStore.from_url(url, prefix=f"parts{time.time_ns()}")
        embedded = open_store(f"sqlite:///{tmp}/parts.db")
        try:
            return [
                await measure(StubStore(), runs, run_steps, "stub"),
                await measure(redis_store, runs, run_steps, "redis"),
                await measure(embedded, runs, run_steps, "embedded"),
            ]
        finally:
            await redis_store.close()
            await embedded.close()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=1000, help="runs per store")
    parser.add_argument("--run-steps", type=int, default=5, help="steps per run")
    parser.add_argument("--url", help="a redis-server of yours (loopback only)")
    args = parser.parse_args(argv)
    logging.getLogger("agentfsm.storage").setLevel(logging.ERROR)  # the no-persistence warning
    with redis_for(args.url, parser) as (url, _):
        got = asyncio.run(all_stores(url, args.runs, args.run_steps))
    head = ["p50 µs per run", "stub store", "Redis", "embedded"]
    body = [[name, *("-" if key not in g else f"{g[key]:,.1f}" for g in got)]
            for name, key in PARTS]  # fmt: skip
    print(f"{args.runs} runs of {args.run_steps} async no-op tool steps per store\n")
    print(markdown_table(head, body))


if __name__ == "__main__":
    main()
