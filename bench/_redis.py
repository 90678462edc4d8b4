"""A throw-away redis-server of the benchmark's own, on a free loopback port.

Self-contained on purpose (benchmarks do not import from tests/). No persistence
(`--appendonly no --save ""`): the benchmarks measure the client and the round trip, not the disk.
"""

from __future__ import annotations

import argparse
import ipaddress
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

__all__ = ["check_loopback_url", "local_redis", "markdown_table", "redis_for"]

_LOOPBACK = ipaddress.ip_network("127.0.0.0/8")


def check_loopback_url(url: str) -> str:
    """`url` when it is `redis://<an address in 127.0.0.0/8>:<port>[/db]`, else `ValueError`.

    Benchmarks only ever talk to a server on this machine's loopback.
    """
    parts = urlsplit(url)
    if parts.scheme != "redis":
        raise ValueError(f"{url!r}: only redis:// URLs are accepted")
    try:
        host = ipaddress.ip_address(parts.hostname or "")
    except ValueError:
        raise ValueError(
            f"{url!r}: give the host as a loopback address such as 127.0.0.1, not a name"
        ) from None
    if host not in _LOOPBACK:
        raise ValueError(f"{url!r}: {host} is outside 127.0.0.0/8; benchmarks stay on loopback")
    return url


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@contextmanager
def local_redis(timeout: float = 10.0) -> Iterator[str]:
    """Start redis-server on 127.0.0.1 and a free port; yield its URL; stop it afterwards."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError(
            "redis-server is not installed (apt-get install redis-server, or brew install redis);"
            " or pass --url redis://127.0.0.1:PORT of a running one"
        )
    with tempfile.TemporaryDirectory(prefix="agentfsm-bench-redis-") as workdir:
        port = _free_port()
        args = [
            binary,
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--appendonly", "no",
            "--save", "",
            "--dir", workdir,
            "--daemonize", "no",
            "--logfile", "redis.log",
        ]  # fmt: skip
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + timeout
            while not _answers(port):
                if proc.poll() is not None:
                    log = (Path(workdir) / "redis.log").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"redis-server exited with {proc.returncode}: {log}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not answer on port {port} in {timeout}s")
                time.sleep(0.02)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextmanager
def redis_for(url: str | None, parser: argparse.ArgumentParser) -> Iterator[tuple[str, bool]]:
    """The server a benchmark runs on: (URL, started by us). The `--url` given, checked to
    be on loopback (else `parser.error`), or a fresh server of our own."""
    if url:
        try:
            yield check_loopback_url(url), False
        except ValueError as exc:
            parser.error(str(exc))
        return
    with local_redis() as own:
        yield own, True


def markdown_table(head: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    """An aligned Markdown table (readable in a terminal, pasteable into README.md): the
    first column left-aligned, the others right-aligned."""
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]

    def fmt(cells: Sequence[str]) -> str:
        out = [
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "| " + " | ".join(out) + " |"

    rule = "|" + "|".join("-" * (w + 1) + (":" if i else "-") for i, w in enumerate(widths)) + "|"
    return "\n".join([fmt(head), rule, *(fmt(r) for r in body)])
