"""Postgres for the tests: the machine's server (127.0.0.1:5432, database `test`, trust auth),
a schema of each test's own on it, and private servers (initdb + postgres on a free port in
a temporary directory) that tests may SIGKILL and restart.

Every machine of this kind (and CI) runs the shared server; where it does not answer, a test
needing it fails under CI=true and is skipped elsewhere, as a missing program is
(`tests/programs.py`). `$AGENTFSM_TEST_POSTGRES` names another server."""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from .programs import require_program

__all__ = [
    "PgBouncer",
    "PostgresServer",
    "drop_schemas",
    "empty_postgres",
    "execute",
    "require_postgres",
    "schema_url",
]

SHARED = os.environ.get("AGENTFSM_TEST_POSTGRES", "postgresql://127.0.0.1:5432/test")
_schemas = itertools.count()
_checked: list[bool] = []


def require_postgres() -> str:
    """The shared server's URL; in CI its absence fails the test, elsewhere it skips it."""
    if not _checked:
        parts = urlsplit(SHARED)
        try:
            with socket.create_connection((parts.hostname, parts.port or 5432), timeout=2):
                _checked.append(True)
        except OSError:
            _checked.append(False)
    if not _checked[0]:
        message = (
            f"no Postgres answers at {SHARED} (apt-get install postgresql, or set"
            " AGENTFSM_TEST_POSTGRES)"
        )
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"{message}; CI must run the Postgres tests")
        pytest.skip(message)
    return SHARED


def schema_url(base: str | None = None) -> str:
    """A URL of a store in a new schema no other test (or process) uses."""
    base = base or require_postgres()
    return f"{base}{'&' if '?' in base else '?'}schema=t_{os.getpid()}_{next(_schemas)}"


async def drop_schemas(base: str) -> None:
    """Drop the schemas this process made with `schema_url` (and everything in them)."""
    import asyncpg

    conn = await asyncpg.connect(base.partition("?")[0])
    try:
        names = await conn.fetch(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE $1", f"t\\_{os.getpid()}\\_%"
        )
        for (name,) in names:
            await conn.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")
    finally:
        await conn.close()


def _program(name: str) -> str:
    """`initdb`/`postgres`/`pg_ctl`: on PATH, else in Debian's /usr/lib/postgresql/N/bin."""
    found = shutil.which(name)
    if found:
        return found
    for version in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (version / name).exists():
            return str(version / name)
    return require_program(name, "apt-get install postgresql", "the Postgres server tests")


class PostgresServer:
    """A private Postgres on 127.0.0.1:`port`, its data in `workdir` (trust auth, fsync on:
    a SIGKILL loses nothing a commit acknowledged)."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.postgres = _program("postgres")
        self.initdb = _program("initdb")
        self.user: dict[str, int] = {}
        self.own_dir = False
        if os.geteuid() == 0:  # initdb and postgres refuse root: run them as `postgres`
            try:
                account = pwd.getpwnam("postgres")
            except KeyError:
                pytest.fail("running as root, and there is no 'postgres' user to run a server")
            self.user = {"user": account.pw_uid, "group": account.pw_gid}
            # A directory of its own that user can reach (pytest's is root's alone).
            workdir = Path(tempfile.mkdtemp(prefix="agentfsm-pg-"))
            os.chown(workdir, account.pw_uid, account.pw_gid)
            self.own_dir = True
        self.workdir = workdir
        self.data = workdir / "data"
        self.port = port or _free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> PostgresServer:
        """Start the server (initdb first, once) and return when it says it accepts
        connections (its log's line; after a kill, once crash recovery is done)."""
        if not self.data.exists():
            subprocess.run(
                [self.initdb, "-D", str(self.data), "-U", "postgres", "--auth=trust",
                 "--no-sync", "-E", "UTF8"],
                check=True, capture_output=True, timeout=120, **self.user,  # type: ignore[call-overload]
            )  # fmt: skip
        log_path = self.workdir / "postgres.log"
        seen = log_path.stat().st_size if log_path.exists() else 0
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [self.postgres, "-D", str(self.data), "-p", str(self.port),
                 "-k", str(self.workdir), "-c", "listen_addresses=127.0.0.1",
                 "-c", "shared_buffers=16MB", "-c", "max_connections=30"],
                stdout=log, stderr=log, start_new_session=True, **self.user,  # type: ignore[call-overload]
            )  # fmt: skip
        deadline = time.monotonic() + 120  # a busy CI machine; crash recovery after a kill
        while time.monotonic() < deadline:
            text = log_path.read_bytes()[seen:]
            if b"ready to accept connections" in text:
                return self
            if self.proc.poll() is not None:
                tail = text.decode(errors="replace")[-2000:]
                raise RuntimeError(f"postgres exited with {self.proc.returncode}: {tail}")
            time.sleep(0.02)
        raise RuntimeError(f"postgres did not start on port {self.port} within 120 s")

    def kill(self) -> None:
        """SIGKILL the server and all its processes: no shutdown, no checkpoint."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # a fast shutdown
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()
        self.proc = None
        if self.own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def execute(store: object, sql: str, *args: object) -> object:
    """Run `sql` (`{s}` for the store's schema) on a `PostgresStore`'s server: tests that
    write garbage or lose rows the way a person with psql might."""
    from storage.postgres import PostgresStore

    assert isinstance(store, PostgresStore)
    query = sql.replace("{s}", store.schema)
    return await store.connections.call("test", lambda c: c.fetchval(query, *args))


_TABLES = ("runs", "memory", "events", "live", "live_heads", "scope_usage", "scope_charges",
           "scope_held", "limits", "rate_state", "rate_slots", "jobs", "dead_letters",
           "workers")  # fmt: skip


async def empty_postgres(store: object) -> None:
    """Delete every row of a `PostgresStore`'s tables (its schema made, when new)."""
    from storage.postgres import PostgresStore

    assert isinstance(store, PostgresStore)
    wipe = "; ".join(f"DELETE FROM {store.schema}.{table}" for table in _TABLES)
    await store.connections.call("empty the store", lambda c: c.execute(wipe))


class PgBouncer:
    """A PgBouncer in transaction mode on 127.0.0.1:`port` in front of the shared server
    (`pool` server connections for all its clients), its files in a directory of its own."""

    def __init__(self, server: str, pool: int = 2) -> None:
        self.binary = require_program(
            "pgbouncer", "apt-get install pgbouncer", "the PgBouncer test"
        )
        self.server = urlsplit(server)
        self.pool = pool
        self.port = _free_port()
        self.user: dict[str, int] = {}
        self.workdir = Path(tempfile.mkdtemp(prefix="agentfsm-pgbouncer-"))
        if os.geteuid() == 0:  # pgbouncer refuses root
            account = pwd.getpwnam("postgres")
            self.user = {"user": account.pw_uid, "group": account.pw_gid}
            os.chown(self.workdir, account.pw_uid, account.pw_gid)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"postgresql://{self.server.username or 'postgres'}@127.0.0.1:{self.port}/test"

    def start(self) -> PgBouncer:
        host, port = self.server.hostname, self.server.port or 5432
        db = self.server.path.lstrip("/") or "test"
        (self.workdir / "users.txt").write_text('"postgres" ""\n"root" ""\n')
        (self.workdir / "pgbouncer.ini").write_text(
            f"[databases]\ntest = host={host} port={port} dbname={db}\n"
            f"[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {self.port}\n"
            f"auth_type = trust\nauth_file = {self.workdir}/users.txt\n"
            f"pool_mode = transaction\ndefault_pool_size = {self.pool}\n"
            "max_client_conn = 100\nunix_socket_dir =\n"
            "ignore_startup_parameters = extra_float_digits,application_name\n"
        )
        log_path = self.workdir / "pgbouncer.log"
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [self.binary, str(self.workdir / "pgbouncer.ini")],
                stdout=log, stderr=log, start_new_session=True, **self.user,  # type: ignore[call-overload]
            )  # fmt: skip
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if b"process up" in log_path.read_bytes():
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"pgbouncer exited: {log_path.read_text()[-2000:]}")
            time.sleep(0.02)
        raise RuntimeError(f"pgbouncer did not start on port {self.port} within 60 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)
        self.proc = None
        shutil.rmtree(self.workdir, ignore_errors=True)
