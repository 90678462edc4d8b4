"""A 3-master Redis Cluster of our own redis-server processes on free loopback ports."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Collection
from pathlib import Path

import redis

from .programs import require_program
from .redis_server import free_port, require_redis_server

__all__ = ["RedisCluster", "free_cluster_port", "require_redis_cli"]

_BUS_OFFSET = 10000  # a cluster node also listens on port + 10000 (the cluster bus)
_RESERVED = {6379, 6379 + _BUS_OFFSET}


def require_redis_cli() -> str:
    """The redis-cli binary; in CI its absence fails the test, elsewhere it skips it."""
    return require_program(
        "redis-cli", "apt-get install redis-tools, or brew install redis", "the real-Redis tests"
    )


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_cluster_port(taken: Collection[int] = ()) -> int:
    """A free loopback port whose cluster-bus port (port + 10000) is free as well."""
    for _ in range(200):
        port = free_port()
        bus = port + _BUS_OFFSET
        if bus > 65535 or port in _RESERVED or port in taken or bus in taken:
            continue
        if _bindable(bus):
            return port
    raise RuntimeError("found no free loopback port pair (port, port + 10000) for a cluster node")


class RedisCluster:
    """Three cluster-enabled redis-servers on 127.0.0.1, masters only, slots split evenly.

    Their files (nodes-PORT.conf, redis-PORT.log) are in `workdir`, a temporary directory
    of the cluster's own unless one is given; a temporary one is removed by `stop()`.
    """

    size = 3

    def __init__(self, workdir: Path | None = None, *, ready_timeout: float = 15.0) -> None:
        self.binary = require_redis_server()
        self.cli = require_redis_cli()
        self._own_workdir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="redis-cluster-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.ready_timeout = ready_timeout
        self.ports: list[int] = []
        taken: set[int] = set()
        for _ in range(self.size):
            port = free_cluster_port(taken)
            self.ports.append(port)
            taken |= {port, port + _BUS_OFFSET}
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        """A seed URL: a cluster client finds the other nodes from it."""
        return f"redis://127.0.0.1:{self.ports[0]}"

    def log_path(self, port: int) -> Path:
        return self.workdir / f"redis-{port}.log"

    def logs(self, tail: int = 2000) -> str:
        """The end of every node's log, for error messages."""
        parts = []
        for port in self.ports:
            path = self.log_path(port)
            text = path.read_text(errors="replace")[-tail:] if path.exists() else "(no log)"
            parts.append(f"--- redis-server 127.0.0.1:{port} ---\n{text}")
        return "\n".join(parts)

    def start(self) -> RedisCluster:
        try:
            for port in self.ports:
                self._spawn(port)
            for port in self.ports:
                self._wait_for_ping(port, deadline=time.monotonic() + 10)
            self._create()
            self._wait_for_ok(deadline=time.monotonic() + self.ready_timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _spawn(self, port: int) -> None:
        args = [
            self.binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.workdir),
            "--daemonize",
            "no",
            "--logfile",
            str(self.log_path(port)),
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            str(self.workdir / f"nodes-{port}.conf"),
            "--cluster-node-timeout",
            "2000",
            "--appendonly",
            "no",
            "--save",
            "",
        ]
        self.procs[port] = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    def _wait_for_ping(self, port: int, *, deadline: float) -> None:
        proc = self.procs[port]
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"redis-server on port {port} exited with {proc.returncode}:\n{self.logs()}"
                )
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            time.sleep(0.02)
        raise RuntimeError(f"redis-server did not answer on port {port} within 10s:\n{self.logs()}")

    def _create(self) -> None:
        args = [self.cli, "--cluster", "create"]
        args += [f"127.0.0.1:{port}" for port in self.ports]
        args += ["--cluster-replicas", "0", "--cluster-yes"]
        try:
            done = subprocess.run(
                args, stdin=subprocess.DEVNULL, capture_output=True, timeout=30, check=False
            )
        except subprocess.TimeoutExpired as e:
            raise RuntimeError(f"redis-cli --cluster create hung for 30s:\n{self.logs()}") from e
        if done.returncode != 0:
            output = (done.stdout + done.stderr).decode(errors="replace")[-2000:]
            raise RuntimeError(
                f"redis-cli --cluster create exited with {done.returncode}:\n{output}\n"
                f"{self.logs()}"
            )

    def _wait_for_ok(self, *, deadline: float) -> None:
        """Until every node sees all slots served and all nodes known."""
        states: dict[int, str] = {}
        while True:
            for port in self.ports:
                states[port] = self._cluster_state(port)
            if all(state == "ok" for state in states.values()):
                return
            if time.monotonic() >= deadline:
                raise RuntimeError(
                    f"Redis Cluster not ready within {self.ready_timeout}s "
                    f"(cluster_state per port: {states}):\n{self.logs()}"
                )
            time.sleep(0.05)

    def _cluster_state(self, port: int) -> str:
        """'ok' once this node reports cluster_state:ok, covers 16384 slots and knows all nodes."""
        client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=1, decode_responses=True)
        try:
            reply = client.cluster("info")
        except redis.RedisError as e:
            return f"error: {e}"
        finally:
            client.close()
        if isinstance(reply, str):  # redis-py parses it into a dict; be safe if it ever doesn't
            reply = dict(line.split(":", 1) for line in reply.splitlines() if ":" in line)
        info = {str(k): str(v).strip() for k, v in dict(reply).items()}
        state = info.get("cluster_state", "?")
        if state != "ok":
            return state
        if info.get("cluster_slots_ok") != "16384":
            return f"ok but cluster_slots_ok={info.get('cluster_slots_ok')}"
        if info.get("cluster_known_nodes") != str(self.size):
            return f"ok but cluster_known_nodes={info.get('cluster_known_nodes')}"
        return "ok"
