"""The web UI's runs page with 100,000 stored runs (issue 20): p50 and p95 per view, on the
embedded store and on a redis-server this script starts.

The runs are made with `Store.create` (3 agents; ~70% done, 20% waiting, 8% running, 2%
failed; created over 30 days). Each view is requested `--requests` times through the ASGI
app (`httpx.ASGITransport`: no sockets, the whole request: routing, the store's listing and
the HTML), after one warm-up request. Beside them, the store call alone for the first page,
and the listing without a cursor (`list_runs()` as the CLI uses it) for contrast.

    python3 bench/ui.py [--runs 100000] [--requests 30] [--url redis://127.0.0.1:PORT]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

if __package__ in (None, ""):  # run as `python3 bench/ui.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx

from agents.ui import create_app
from bench._redis import markdown_table, redis_for
from storage import RunRecord, RunStatus, Store, cursor_of, open_store

AGENTS = ("triage", "researcher", "billing")
MIX: list[tuple[RunStatus, str, float]] = [
    ("done", "done", 0.70), ("waiting", "review", 0.20), ("running", "working", 0.08),
    ("failed", "failed", 0.02),
]  # fmt: skip
DAY = 86_400.0


def _pick(rng: random.Random) -> tuple[RunStatus, str]:
    x = rng.random()
    for status, state, share in MIX:
        if x < share:
            return status, state
        x -= share
    return MIX[0][0], MIX[0][1]


async def fill(store: Store, runs: int, now: float) -> None:
    rng = random.Random(20)
    pending: list[Awaitable[RunRecord]] = []
    for i in range(runs):
        status, state = _pick(rng)
        created = now - rng.uniform(0, 30 * DAY)
        record = RunRecord(
            run_id=f"run-{i:06d}", agent=AGENTS[i % len(AGENTS)], version=1, state=state,
            seq=0, status=status, memory={"title": f"ticket {i}", "n": i},
            created_at=created, updated_at=created + rng.uniform(0, 3600),
            nonce=secrets.token_hex(8),
        )  # fmt: skip
        pending.append(store.create(record))
        if len(pending) == 500:
            await asyncio.gather(*pending)
            pending = []
    await asyncio.gather(*pending)


def _stamp(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M")


async def views(store: Store, now: float) -> dict[str, str]:
    """The page URLs measured: a cursor deep in the store comes from the store itself."""
    deep = await store.list_runs(before=(now - 15 * DAY, ""), limit=1)
    cursor = f"{cursor_of(deep[0])[0]!r}:{deep[0].run_id}" if deep else ""
    window = _stamp(now - 12 * DAY), _stamp(now - 10 * DAY)
    return {
        "first page (50 runs)": "/",
        "a page 15 days deep (keyset cursor)": f"/?before={cursor}",
        "agent=billing": "/?agent=billing",
        "status=failed (2%)": "/?status=failed",
        "status=done (70%)": "/?status=done",
        "agent=triage & state=review": "/?agent=triage&state=review",
        "updated in a 2-day window": f"/?since={window[0]}&until={window[1]}",
        "run id contains '4242' (20 runs)": "/?q=4242",
        "run id contains 'nothing' (every id read)": "/?q=nothing",
    }  # fmt: skip


async def timed(call: Callable[[], Awaitable[object]], requests: int) -> tuple[float, float]:
    await call()  # warm-up
    times = []
    for _ in range(requests):
        t0 = time.perf_counter()
        await call()
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    return statistics.median(times), times[min(len(times) - 1, math.ceil(0.95 * len(times)) - 1)]


async def measure(url: str, runs: int, requests: int, now: float) -> dict[str, tuple[float, float]]:
    store = open_store(url)
    try:
        t0 = time.perf_counter()
        await fill(store, runs, now)
        print(f"  {url.split(':')[0]}: {runs} runs stored in {time.perf_counter() - t0:.1f} s")
        app = create_app(store, loopback=True)
        transport = httpx.ASGITransport(app=app)
        found: dict[str, tuple[float, float]] = {}
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            for name, path in (await views(store, now)).items():

                async def get(path: str = path) -> None:
                    answer = await client.get(path)
                    assert answer.status_code == 200, (path, answer.status_code)

                found[name] = await timed(get, requests)
        first = (math.inf, "")
        found["store call alone: list_runs(before=top, limit=51)"] = await timed(
            lambda: store.list_runs(before=first, limit=51), requests
        )
        found["list_runs(limit=50), no cursor (for contrast)"] = await timed(
            lambda: store.list_runs(limit=50), max(3, requests // 5)
        )
        return found
    finally:
        await store.close()


async def main(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    now = time.time()
    with tempfile.TemporaryDirectory(prefix="agentfsm-bench-ui-") as tmp:
        embedded = await measure(f"sqlite:///{tmp}/ui.db", args.runs, args.requests, now)
    with redis_for(args.url, parser) as (url, _):
        on_redis = await measure(url, args.runs, args.requests, now)
    rows = [
        [name, f"{e[0]:.1f}", f"{e[1]:.1f}", f"{on_redis[name][0]:.1f}", f"{on_redis[name][1]:.1f}"]
        for name, e in embedded.items()
    ]
    print(f"\nRuns page with {args.runs:,} stored runs, ms ({args.requests} requests per row)\n")
    head = ["view", "embedded p50", "embedded p95", "Redis p50", "Redis p95"]
    print(markdown_table(head, rows))
    pages = [n for n in embedded if not n.startswith(("store call", "list_runs("))]
    worst = max(max(embedded[n][0], on_redis[n][0]) for n in pages)
    print(f"\nslowest page p50: {worst:.1f} ms ({'under' if worst < 200 else 'OVER'} 200 ms)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--url", help="a redis://127.0.0.1:PORT to use instead of our own")
    args = parser.parse_args()
    asyncio.run(main(args, parser))
