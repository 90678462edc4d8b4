"""Connections of a Postgres store: a small pool per event loop, a connection taken per store
call (never held across a model request), a health check on checkout, asyncpg's errors turned
into ours, and calls tried again while the server cannot be reached.

Made for PgBouncer in transaction mode: no named (server-side) prepared statements unless
the URL asks (`?prepared=1`), no session state (every statement names the schema; no
`SET`, no `search_path`), and the connection's reset on release is skipped (there is nothing
to reset). A call's function runs as one statement, so it is one transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncpg

from .._durability import Durability
from ..errors import DurabilityUnavailable, StorageError, StoreUnavailable
from ..url import redact
from ._schema import migrate

__all__ = ["Connections", "Settings", "durability_of"]

T = TypeVar("T")
log = logging.getLogger("agentfsm.storage")

_IDLE_CHECK = 2.0
"""A pooled connection idle longer than this is asked `SELECT 1` before it is used."""
_BROKEN = (
    OSError,  # refused, reset, unreachable
    asyncio.TimeoutError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.CannotConnectNowError,  # starting up, shutting down, recovering
    asyncpg.exceptions.AdminShutdownError,  # pg_terminate_backend, a fast shutdown
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.DeadlockDetectedError,
    asyncpg.exceptions.SerializationError,
    asyncpg.exceptions.InterfaceError,  # "connection is closed" and the like
    asyncpg.exceptions.InternalClientError,  # a connection left mid-operation by a failure
)
"""Errors after which the call is tried again (on another connection): all our calls are
safe to resend (a resent commit answers `Duplicate`; a resent acquire by the same owner
returns the same lease)."""


class _Connection(asyncpg.Connection):  # type: ignore[misc]
    def get_reset_query(self) -> str:
        return ""  # no session state is ever set: releasing costs no round trip


@dataclass(frozen=True, kw_only=True, slots=True)
class Settings:
    dsn: str
    """The URL given to asyncpg (our own options removed)."""
    where: str
    """The server and schema, for messages (never a password)."""
    schema: str
    pool_size: int = 10
    prepared: bool = False
    connect_timeout: float = 2.0
    command_timeout: float = 10.0
    retry_for: float = 5.0
    flushed: bool = False
    """Whether every commit must be flushed to disk before it is acknowledged (durability
    "fsync"): the server's `synchronous_commit` is checked once, at the first connection."""


class _Pool:
    """Idle connections of one event loop, and a cap on those in use at once. They are closed
    when the loop shuts down (`asyncio.run` ends, say), on the loop, where they can be: an
    async generator begun on the loop is closed by it then (as `storage/redis/` does)."""

    def __init__(self, size: int) -> None:
        self.idle: list[tuple[Any, float]] = []
        self.slots = asyncio.Semaphore(size)
        self.closer = self._closer()
        with contextlib.suppress(StopIteration):
            self.closer.__anext__().send(None)  # runs to the yield at once

    async def _closer(self) -> AsyncGenerator[None, None]:
        try:
            yield
        finally:
            await self.close()

    async def close(self) -> None:
        idle, self.idle = self.idle, []
        for conn, _ in idle:
            try:
                await asyncio.wait_for(conn.close(), 2.0)
            except Exception:  # closing: nothing more to do for it
                conn.terminate()


class Connections:
    """Connections to one server for one store, per event loop (a connection belongs to the
    loop it was opened on: scripts that call `asyncio.run` twice get new ones)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Pool] = (
            weakref.WeakKeyDictionary()
        )
        self._ready = False
        self._closed = False

    def _pool(self) -> _Pool:
        loop = asyncio.get_running_loop()
        pool = self._pools.get(loop)
        if pool is None:
            pool = self._pools[loop] = _Pool(self.settings.pool_size)
        return pool

    async def _connect(self, *, ready: bool = True) -> Any:
        """A new connection; with `ready`, the schema brought up to date first (once)."""
        s = self.settings
        named = "application_name=" in s.dsn
        conn = await asyncpg.connect(
            s.dsn, timeout=s.connect_timeout, command_timeout=s.command_timeout,
            statement_cache_size=100 if s.prepared else 0, connection_class=_Connection,
            server_settings=None if named else {"application_name": "agentfsm"},
        )  # fmt: skip
        if ready and not self._ready:
            try:
                await migrate(conn, s.schema, s.where)
                if s.flushed:
                    await _check_flushed(conn, s.where)
            except BaseException:
                await conn.close()
                raise
            self._ready = True
        return conn

    async def _checkout(self, pool: _Pool) -> Any:
        now = time.monotonic()
        while pool.idle:
            conn, since = pool.idle.pop()
            if conn.is_closed():
                continue
            if now - since < _IDLE_CHECK:
                return conn
            try:  # the health check: a server restart or a pooler may have dropped it
                await conn.fetchval("SELECT 1", timeout=self.settings.connect_timeout)
                return conn
            except (*_BROKEN, asyncpg.PostgresError):
                conn.terminate()
        return await self._connect()

    @contextlib.asynccontextmanager
    async def connection(self, *, counted: bool = True) -> AsyncIterator[Any]:
        """A connection for one call, given back afterwards (dropped when it broke).
        `counted=False` for a waiting reader's listener: it takes none of the pool's slots,
        so the calls it waits for never wait for it."""
        if self._closed:
            raise StorageError(f"the store on {self.settings.where} is closed")
        pool = self._pool()
        async with pool.slots if counted else contextlib.nullcontext():
            conn = await self._checkout(pool)
            try:
                yield conn
            except BaseException as exc:
                # Kept only after an error the server reported on a sound connection; after
                # anything else (cancelled mid-call, a broken socket, a confused client
                # state) the connection is dropped.
                sound = isinstance(exc, asyncpg.PostgresError) and not isinstance(exc, _BROKEN)
                if sound and not conn.is_closed() and not conn.is_in_transaction():
                    pool.idle.append((conn, time.monotonic()))
                else:
                    conn.terminate()
                raise
            if conn.is_in_transaction():  # cancelled inside a transaction: not reusable
                conn.terminate()
            else:
                pool.idle.append((conn, time.monotonic()))

    async def call(self, what: str, op: Callable[[Any], Awaitable[T]]) -> T:
        """`op(connection)`, tried again on another connection while the server cannot be
        reached (for up to `retry_for` seconds, with backoff); errors become ours."""
        give_up = time.monotonic() + self.settings.retry_for
        pause = 0.05
        while True:
            try:
                async with self.connection() as conn:
                    return await op(conn)
            except _BROKEN as exc:
                if time.monotonic() + pause > give_up:
                    raise self.unavailable(what, exc) from None
                log.debug(
                    "postgres at %s: %s failed (%s); trying again", self.settings.where, what, exc
                )
            except asyncpg.PostgresError as exc:
                raise self.refused(what, exc) from None
            await asyncio.sleep(pause)
            pause = min(pause * 2, 1.0)

    def unavailable(self, what: str, exc: BaseException) -> StorageError:
        """Our error for `exc`, one of `_BROKEN` (a refused credential is a server error:
        `refused`)."""
        where = self.settings.where
        if isinstance(exc, ConnectionRefusedError):
            return StoreUnavailable(
                f"cannot reach Postgres at {where} to {what}: connection refused: nothing"
                " listens there (is the server running, on that host and port?)"
            )
        if isinstance(exc, asyncio.TimeoutError):
            return StoreUnavailable(
                f"cannot {what}: Postgres at {where} did not answer in time; is it overloaded,"
                " stopped, or behind a firewall?"
            )
        return StoreUnavailable(f"cannot reach Postgres at {where} to {what}: {exc}")

    def refused(self, what: str, exc: BaseException) -> StorageError:
        where = self.settings.where
        if isinstance(
            exc,
            asyncpg.exceptions.InvalidPasswordError
            | asyncpg.exceptions.InvalidAuthorizationSpecificationError,
        ):
            return StorageError(f"Postgres at {where} refused the credentials to {what}: {exc}")
        if isinstance(exc, asyncpg.exceptions.InvalidCatalogNameError):
            return StorageError(
                f"cannot {what}: {exc} on the server of {where} (create it: createdb NAME, or"
                " name an existing database in the URL)"
            )
        if isinstance(exc, asyncpg.exceptions.InsufficientPrivilegeError):
            return StorageError(
                f"Postgres at {where} refused to {what}: {exc} (grant the store's user the"
                " rights on its schema, or give it a schema of its own: ?schema=NAME)"
            )
        if (
            isinstance(exc, asyncpg.exceptions.InvalidSQLStatementNameError)
            and self.settings.prepared
        ):
            return StorageError(
                f"Postgres at {where} refused to {what}: {exc} (a pooler in transaction mode"
                " that does not track prepared statements, PgBouncer before 1.21 say, loses"
                " them between transactions: drop ?prepared=1 from the URL)"
            )
        return StorageError(f"Postgres at {where} refused to {what}: {exc}")

    async def ping(self, within: float) -> None:
        """`SELECT 1` on a new connection (the schema is not made or checked: a first
        migration may take longer than a ping should wait)."""

        async def ask() -> None:
            conn = await self._connect(ready=False)
            try:
                await conn.fetchval("SELECT 1", timeout=within)
            finally:
                conn.terminate()

        try:
            await asyncio.wait_for(ask(), within)
        except (TimeoutError, *_BROKEN) as exc:
            raise self.unavailable("answer a ping", exc) from None
        except asyncpg.PostgresError as exc:
            raise self.refused("answer a ping", exc) from None

    async def close(self) -> None:
        """Close this loop's connections (those of other loops close with their loops)."""
        self._closed = True
        pool = self._pools.get(asyncio.get_running_loop())
        if pool is not None:
            await pool.close()


async def _check_flushed(conn: Any, where: str) -> None:
    """Refuse durability "fsync" on a server whose commits do not wait for their WAL flush."""
    setting = await conn.fetchval("SELECT current_setting('synchronous_commit')")
    if setting == "off":
        raise DurabilityUnavailable(
            f"durability 'fsync': Postgres at {where} has synchronous_commit = off, so a commit"
            " is acknowledged before it is on disk: set it to on (ALTER DATABASE … SET"
            " synchronous_commit = on), or open the store at durability 'primary'"
        )


def durability_of(url: str, ours: dict[str, str], given: str | None) -> Durability:
    """The level the URL and `open_store(durability=)` ask for, if this store can give it."""
    named = ours.get("durability")
    if named is not None and given is not None and named != given:
        raise ValueError(
            f"store URL {redact(url)!r} says durability={named!r} but {given!r} was passed"
        )
    level = Durability.parse(named or given or "primary", ours.get("durability_timeout"))
    if level.replicas:
        raise DurabilityUnavailable(
            f"store URL {redact(url)!r}: durability {str(level)!r} needs the Postgres store to"
            " wait for synchronous standbys, which it does not do yet: use 'fsync' (each commit"
            " flushed to the server's disk), or a Redis store with replicas"
        )
    return level
