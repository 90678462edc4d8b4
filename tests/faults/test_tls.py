"""`rediss://` URLs: agents run over TLS (the server's certificate checked against its CA),
and the password of a TLS URL shows nowhere either."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import BaseModel

from agents import Agent, tool
from storage import RedisStore, StorageError, open_store

from ..programs import require_program
from ..redis_server import free_port, require_redis_server

PASSWORD = "tls-s3cret-pw"
ROOT = Path(__file__).resolve().parents[2]


def require_openssl() -> str:
    return require_program("openssl", "apt-get install openssl", "the TLS test")


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    """A redis-server that speaks only TLS, with a certificate for 127.0.0.1; its CA file."""
    openssl, binary = require_openssl(), require_redis_server()
    workdir = tmp_path_factory.mktemp("tls")
    cert, key = workdir / "cert.pem", workdir / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    port = free_port()
    server = subprocess.Popen(
        [binary, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", str(cert), "--tls-key-file", str(key),
         "--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no",
         "--requirepass", PASSWORD, "--save", "", "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60  # a busy CI machine
        while True:  # up when its TLS port takes connections
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert time.monotonic() < deadline and server.poll() is None, "TLS redis not up"
                time.sleep(0.05)
        yield port, cert
    finally:
        server.terminate()
        server.wait(5)


class Memo(BaseModel):
    n: int = 0


steps = Agent(
    name="over_tls", memory=Memo, initial="a", final=["done"],
    transitions=[
        tool("one", "a", "b", lambda m: m.n + 1, into="n"),
        tool("two", "b", "done", lambda m: m.n + 1, into="n"),
    ],
)  # fmt: skip


async def test_an_agent_runs_over_tls_with_the_certificate_checked(
    tls_server: tuple[int, Path],
) -> None:
    port, ca = tls_server
    store = open_store(f"rediss://:{PASSWORD}@127.0.0.1:{port}/0?ssl_ca_certs={ca}&prefix=tls")
    assert isinstance(store, RedisStore)
    run = await steps.start(store, Memo(), run_id="t1")
    await run.until_done()
    assert (run.status, run.memory.n) == ("done", 2)
    assert [e.seq for e in await store.history("t1")] == [0, 1, 2]
    await store.close()


async def test_a_wrong_password_over_tls_is_named_without_showing_it(
    tls_server: tuple[int, Path],
) -> None:
    port, ca = tls_server
    wrong = "not-" + PASSWORD
    store = open_store(f"rediss://:{wrong}@127.0.0.1:{port}/0?ssl_ca_certs={ca}")
    with pytest.raises(StorageError) as caught:
        await store.load("t1")
    await store.close()
    message = str(caught.value)
    assert "refused the credentials" in message and "rediss://:***@127.0.0.1" in message
    assert wrong not in message and PASSWORD not in message
    shown = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "agents", "runs", "--store",
         f"rediss://:{wrong}@127.0.0.1:{port}/0?ssl_ca_certs={ca}"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert shown.returncode == 2
    assert wrong not in shown.stdout + shown.stderr and "***" in shown.stderr
