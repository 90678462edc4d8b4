"""Our own redis-server processes on free loopback ports, which tests may kill and restart."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from .programs import require_program

__all__ = ["RedisServer", "free_port", "require_redis_server"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def require_redis_server() -> str:
    """The redis-server binary; in CI its absence fails the test, elsewhere it skips it."""
    return require_program(
        "redis-server",
        "apt-get install redis-server, or brew install redis",
        "the real-Redis tests",
    )


class RedisServer:
    """A redis-server on 127.0.0.1:`port`, its files in `workdir`.

    With `appendfsync="always"` every acknowledged write is on disk, so a SIGKILL and a
    restart lose nothing.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        port: int | None = None,
        appendfsync: str | None = None,
        binary: str | None = None,
        extra: Sequence[str] = (),
    ) -> None:
        self.binary = binary or require_redis_server()
        self.extra = list(extra)
        """More redis-server arguments (`--replicaof HOST PORT`, say)."""
        self.workdir = workdir
        self.port = port or free_port()
        self.appendfsync = appendfsync
        self.proc: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        args = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--dir",
            str(self.workdir),
            "--daemonize",
            "no",
            "--logfile",
            "redis.log",
        ]
        if self.appendfsync:
            args += ["--appendonly", "yes", "--appendfsync", self.appendfsync]
        else:
            args += ["--appendonly", "no"]
        args += self.extra
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60  # a busy CI machine
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                log = (self.workdir / "redis.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}: {log}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                pass
            time.sleep(0.02)
        raise RuntimeError(f"redis-server did not answer on port {self.port} within 60 s")

    def kill(self) -> None:
        """SIGKILL: no shutdown, no final save."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.kill()
        self.proc = None
