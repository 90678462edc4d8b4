"""Bytes written per commit, as a run's history and memory grow.

A commit carries only the memory fields its step changed (a patch) and its event, so what it
writes should not depend on how big the memory is or how long the history is (the `Store`
contract, storage/base.py). This measures it. One agent loops a tool step that bumps a small
counter field, next to a big field nobody changes (`blob`, about 1 KB or 1 MB of memory);
each run goes on to 10,000+ commits, and at 10, 1,000 and 10,000 commits of history the next
`--window` commits (each one `await run.step()` through the real runner) are measured:

- Redis (a `redis-server` this script starts, AOF switched on with `CONFIG SET appendonly yes`):
  the bytes the client sent (`total_net_input_bytes` of `INFO stats`: the EVALSHA request as
  sent), the bytes appended to the AOF (`aof_current_size` of `INFO persistence`: what Redis
  writes to disk for the commit), and how much the run's keys grew (`MEMORY USAGE`, all
  samples, of its run hash, events stream and keys hash).
- The embedded store (an SQLite file in WAL mode): the growth of the `-wal` file, checkpointed
  to zero (`PRAGMA wal_checkpoint(TRUNCATE)`) before each window, in bytes and WAL frames
  (one frame = one page written).

The event JSON column is the size of the commit's event as encoded (`Event` with its patch),
read back from the history. Usage, from the repository root:

    python3 bench/commit_size.py [--histories 10,1000,10000] [--sizes 1024,1048576]
                                 [--window 100] [--url redis://127.0.0.1:PORT]

With `--url` the server's configuration is left alone: the AOF column is measured only when
that server already has `appendonly yes`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import secrets
import sqlite3
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python3 bench/commit_size.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pydantic_core
from pydantic import BaseModel, TypeAdapter

from agents import Agent, tool
from bench._redis import markdown_table, redis_for
from statemachine import Run
from storage import EmbeddedStore, Event, RedisStore, Store

LEASE_TTL = 600.0
"""Seconds; renewals (every ttl/3) would add commands of their own: none falls in a run."""

_EVENT = TypeAdapter(Event)


class Memory(BaseModel):
    blob: str = ""
    """The bulk of the memory; no step changes it."""
    count: int = 0
    """What each step changes: its patch is this one field."""


def tick(memory: Memory) -> int:
    return memory.count + 1


def stop(memory: Memory) -> None:
    return None


def looping_agent() -> Agent[Memory]:
    """`loop --tick--> loop` (into `count`) until `count` reaches a bound no run reaches."""
    return Agent(
        name="bench_commit_size",
        memory=Memory,
        initial="loop",
        final="done",
        transitions=[
            tool("finish", "loop", "done", stop, guard=lambda m: m.count >= 10**9, in_thread=False),
            tool("tick", "loop", "loop", tick, into="count", in_thread=False),
        ],
        lease_ttl=LEASE_TTL,
    )


def memory_of(size: int) -> Memory:
    """A memory whose JSON is `size` bytes (when `size` > its fixed part)."""
    fixed = len(pydantic_core.to_json(Memory().model_dump(mode="json")))
    return Memory(blob="x" * max(size - fixed, 0))


@dataclass(frozen=True, kw_only=True, slots=True)
class Row:
    memory: int
    """Bytes of the memory as JSON."""
    history: int
    """Commits in the run before the window."""
    event: float
    """Event JSON bytes per commit."""
    measures: dict[str, float]
    """Column name -> bytes (or frames) per commit."""


Probe = Callable[[str], Awaitable[dict[str, float]]]
"""Counters read for one run (its id given); their differences are bytes written."""


async def measure(
    store: Store,
    *,
    tag: str,
    sizes: Sequence[int],
    histories: Sequence[int],
    window: int,
    before: Callable[[], Awaitable[None]],
    probe: Probe,
    progress: Callable[[str], None],
) -> list[Row]:
    """For each memory size, one run driven to the largest history + `window` commits; the
    `probe` readings before and after each window (less what reading them costs, measured by
    reading twice with nothing between) give the bytes per commit."""
    agent = looping_agent()
    rows = []
    for size in sizes:
        run_id = f"size-{tag}-{size}-{secrets.token_hex(3)}"
        memory = memory_of(size)
        json_size = len(pydantic_core.to_json(memory.model_dump(mode="json")))
        run = await agent.start(store, memory, run_id=run_id)
        first = await probe(run_id)
        overhead = {k: v - first[k] for k, v in (await probe(run_id)).items()}
        t0 = time.perf_counter()
        for history in histories:
            await advance(run, history)
            await before()
            start = await probe(run_id)
            await advance(run, history + window)
            end = await probe(run_id)
            events = (await store.history(run_id, history + 1))[:window]
            if [e.seq for e in events] != list(range(history + 1, history + window + 1)):
                raise RuntimeError(f"{run_id}: the window's events are not seqs after {history}")
            rows.append(
                Row(
                    memory=json_size,
                    history=history,
                    event=sum(len(_EVENT.dump_json(e)) for e in events) / window,
                    measures={k: (end[k] - start[k] - overhead[k]) / window for k in start},
                )
            )
        await run.release()
        progress(
            f"  {tag}: memory {_size(json_size)}, {run.seq:,} commits in"
            f" {time.perf_counter() - t0:.1f} s"
        )
    return rows


async def advance(run: Run[Memory], seq: int) -> None:
    while run.seq < seq:
        if await run.step() is None:
            raise RuntimeError(f"{run!r} stopped before seq {seq}")


# ------------------------------------------------------------------------------- Redis


class RedisProbe:
    """Server counters for one run's keys: bytes in, AOF size, the keys' memory."""

    def __init__(self, store: RedisStore, *, aof: bool) -> None:
        self.store = store
        self.aof = aof

    async def read(self, run_id: str) -> dict[str, float]:
        client = self.store.client
        stats: dict[str, Any] = await client.info("stats")
        got = {"sent": float(stats["total_net_input_bytes"])}
        if self.aof:
            persistence: dict[str, Any] = await client.info("persistence")
            got["aof"] = float(persistence["aof_current_size"])
        used = 0
        for part in ("run", "events", "keys"):
            n = await client.memory_usage(self.store.key(run_id, part), samples=0)
            used += int(n or 0)
        got["stored"] = float(used)
        return got


async def enable_aof(store: RedisStore) -> None:
    """Switch the AOF on (no automatic rewrites) and wait for its first rewrite to end."""
    client = store.client
    await client.config_set("auto-aof-rewrite-percentage", 0)
    await client.config_set("appendonly", "yes")
    deadline = time.monotonic() + 30
    while True:
        info: dict[str, Any] = await client.info("persistence")
        if (
            int(info["aof_enabled"]) == 1
            and int(info["aof_rewrite_in_progress"]) == 0
            and int(info["aof_rewrite_scheduled"]) == 0
        ):
            return
        if time.monotonic() > deadline:
            raise RuntimeError("redis-server did not finish switching its AOF on in 30 s")
        await asyncio.sleep(0.05)


async def bench_redis(
    url: str, args: argparse.Namespace, *, own_server: bool, progress: Callable[[str], None]
) -> tuple[str, list[Row]]:
    prefix = f"bench{secrets.token_hex(3)}"
    store = RedisStore.from_url(url, prefix=prefix)
    try:
        server: dict[str, Any] = await store.client.info("server")
        if own_server:
            await enable_aof(store)
        persistence: dict[str, Any] = await store.client.info("persistence")
        aof = int(persistence["aof_enabled"]) == 1
        probe = RedisProbe(store, aof=aof)
        rows = await measure(
            store,
            tag="redis",
            sizes=args.sizes,
            histories=args.histories,
            window=args.window,
            before=lambda: _noop(),
            probe=probe.read,
            progress=progress,
        )
        where = (
            f"redis-server {server['redis_version']}"
            f" ({'started by this script, AOF on' if own_server else f'at {url}'})"
        )
        if not aof:
            where += ", AOF off: no AOF column"
        return where, rows
    finally:
        if not own_server:
            async for key in store.client.scan_iter(match=f"{prefix}:*", count=1000):
                await store.client.unlink(key)
        await store.close()


async def _noop() -> None:
    return None


# ---------------------------------------------------------------------------- embedded


async def bench_embedded(
    tmpdir: str, args: argparse.Namespace, *, progress: Callable[[str], None]
) -> tuple[str, list[Row]]:
    rows: list[Row] = []
    page_size = 0
    for size in args.sizes:  # a file per run: no other run's rows share its pages
        path = Path(tmpdir) / f"bench-{size}.db"
        store = EmbeddedStore(path)
        wal = Path(f"{path}-wal")
        db = store.connection
        (page_size,) = db.execute("PRAGMA page_size").fetchone()
        frame = 24 + int(page_size)

        async def checkpoint(db: sqlite3.Connection = db, path: Path = path) -> None:
            # The store's own checkpoint thread may be checkpointing right now: try again.
            for _ in range(500):
                busy, _, _ = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
                if not busy:
                    return
                await asyncio.sleep(0.01)
            raise RuntimeError(f"{path}: the WAL checkpoint was blocked by a reader")

        async def probe(run_id: str, wal: Path = wal, frame: int = frame) -> dict[str, float]:
            body = max(_file_size(wal) - 32, 0)  # the 32-byte WAL header is written once
            return {"wal": float(body), "frames": body / frame}

        try:
            rows += await measure(
                store,
                tag="embedded",
                sizes=[size],
                histories=args.histories,
                window=args.window,
                before=checkpoint,
                probe=probe,
                progress=progress,
            )
        finally:
            await store.close()
    return f"EmbeddedStore (SQLite WAL, synchronous=NORMAL, page size {page_size})", rows


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


# ------------------------------------------------------------------------------- report


def _size(n: float) -> str:
    if n >= 1024 * 1024:
        return f"{n / 1024 / 1024:.1f} MB"
    if n >= 1024:
        return f"{n / 1024:.1f} KB"
    return f"{n:.0f} B"


COLUMNS = {
    "sent": "sent to Redis B",
    "aof": "AOF B",
    "stored": "key memory B",
    "wal": "WAL B",
    "frames": "WAL pages",
}


def report(rows: Sequence[Row]) -> str:
    keys = [k for k in COLUMNS if k in rows[0].measures]
    head = ["memory", "history", "event JSON B", *(COLUMNS[k] for k in keys)]
    body = [
        [
            _size(r.memory),
            f"{r.history:,}",
            f"{r.event:,.0f}",
            *(f"{r.measures[k]:,.1f}" if k == "frames" else f"{r.measures[k]:,.0f}" for k in keys),
        ]
        for r in rows
    ]
    return markdown_table(head, body)


def flatness(rows: Sequence[Row], key: str) -> str:
    values = [r.measures[key] for r in rows]
    lo, hi = min(values), max(values)
    biggest = max(r.memory for r in rows)
    return (
        f"{COLUMNS[key]} per commit ranges {lo:,.0f}..{hi:,.0f} (max/min {hi / lo:.2f}x) over"
        f" memories up to {_size(biggest)}: {hi / biggest:.4%} of that memory"
    )


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{platform.system()} {platform.release()}, {cpu}, nproc {os.cpu_count()};"
        f" {platform.python_implementation()} {platform.python_version()}"
    )


async def bench(url: str, args: argparse.Namespace, *, own_server: bool) -> None:
    print(machine())
    print(
        f"memories {', '.join(_size(s) for s in args.sizes)}; windows of {args.window} commits"
        f" after {', '.join(f'{h:,}' for h in args.histories)} commits of history",
        flush=True,
    )

    def progress(line: str) -> None:
        print(line, flush=True)

    t0 = time.perf_counter()
    where, redis_rows = await bench_redis(url, args, own_server=own_server, progress=progress)
    with tempfile.TemporaryDirectory(prefix="agentfsm-bench-") as tmpdir:
        embedded, embedded_rows = await bench_embedded(tmpdir, args, progress=progress)
    print(f"\n### {where}\n")
    print(report(redis_rows))
    print(f"\n### {embedded}\n")
    print(report(embedded_rows))
    print()
    if "aof" in redis_rows[0].measures:
        print("- " + flatness(redis_rows, "aof"))
    print("- " + flatness(redis_rows, "sent"))
    print("- " + flatness(embedded_rows, "wal"))
    print(f"\ntotal time {time.perf_counter() - t0:.1f} s")


def _ints(text: str) -> list[int]:
    try:
        values = [int(v.replace("_", "")) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of integers: {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"give positive integers: {text!r}")
    return sorted(set(values))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--histories",
        type=_ints,
        default=[10, 1000, 10_000],
        help="commits of history before each measured window (default 10,1000,10000)",
    )
    parser.add_argument(
        "--sizes",
        type=_ints,
        default=[1024, 1024 * 1024],
        help="memory sizes in bytes of JSON (default 1024,1048576)",
    )
    parser.add_argument(
        "--window", type=int, default=100, help="commits measured per window (default 100)"
    )
    parser.add_argument(
        "--url", help="use this redis-server (redis://127.0.0.1:PORT, loopback only)"
    )
    args = parser.parse_args(argv)
    if args.window < 1:
        parser.error("--window must be at least 1")
    with redis_for(args.url, parser) as (url, own_server):
        asyncio.run(bench(url, args, own_server=own_server))


if __name__ == "__main__":
    main()
