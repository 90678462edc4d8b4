"""The embedded store's database: one SQLite connection in WAL mode, its schema brought up to
date, and transactions that turn sqlite3's errors into ours. Every module of this folder works
on a `Database`; `EmbeddedStore` (`store.py`) builds the contract on it."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal, ParamSpec, TypeAlias, TypeVar

from ..errors import StorageError, StoreUnavailable
from ._checkpoint import Checkpointer
from ._schema import SCHEMA_VERSION, create_schema, foreign, upgradable
from ._trouble import busy, unwritable
from .paging import PAGE_INDEXES

__all__ = ["Database", "Synchronous"]

P = ParamSpec("P")
T = TypeVar("T")
Synchronous: TypeAlias = Literal["NORMAL", "FULL"]

_BUSY_TIMEOUT = 5.0
"""Seconds to wait for another process's write lock before giving up."""


class Database:
    """An SQLite file (or ":memory:") opened for a store; `tables` make the tables beside the
    schema's (IF NOT EXISTS) in one transaction when it opens."""

    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: Synchronous = "NORMAL",
        tables: Sequence[Callable[[sqlite3.Connection], None]] = (),
    ) -> None:
        if synchronous not in ("NORMAL", "FULL"):
            raise ValueError(f"synchronous must be 'NORMAL' or 'FULL', not {synchronous!r}")
        self._path = str(path)
        self._lock = threading.Lock()
        try:
            if self._path != ":memory:":
                Path(self._path).parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                self._path, timeout=_BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
            )
        except (OSError, sqlite3.Error) as exc:
            why = unwritable(self._path, str(exc))
            raise StorageError(why or f"cannot open the store {self._path}: {exc}") from None
        try:
            self._use_wal()
            self._db.execute(f"PRAGMA synchronous={synchronous}")
            self._migrate()
            self._transaction("set up the side tables", "BEGIN IMMEDIATE", self._create, tables)
            for statement in PAGE_INDEXES:
                self._db.execute(statement)
            self._checkpoints: Checkpointer | None = None
            if self._path != ":memory:":
                self._db.execute("PRAGMA wal_autocheckpoint=0")  # done off the loop, below
                self._checkpoints = Checkpointer(self._path, timeout=_BUSY_TIMEOUT)
        except sqlite3.Error as exc:
            self._db.close()
            why = unwritable(self._path, str(exc))
            if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_BUSY:
                why = busy(self._path, _BUSY_TIMEOUT)
            raise StorageError(why or f"cannot open the store {self._path}: {exc}") from None
        except BaseException:
            self._db.close()
            raise

    def _create(self, tables: Sequence[Callable[[sqlite3.Connection], None]]) -> None:
        for create in tables:
            create(self._db)

    def _use_wal(self) -> None:
        """Switch the file to WAL (it stays so). The switch needs the file to itself and
        does not wait for a busy file like other statements: when processes open a new file
        at once, it is tried again until the busy timeout."""
        give_up = time.monotonic() + _BUSY_TIMEOUT
        while True:
            try:
                self._db.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > give_up:
                    raise
                time.sleep(0.01)

    @property
    def path(self) -> str:
        """The database file as given, or ":memory:"."""
        return self._path

    @property
    def connection(self) -> sqlite3.Connection:
        """The underlying connection (in autocommit mode; transactions are explicit)."""
        return self._db

    def _migrate(self) -> None:
        (version,) = self._db.execute("PRAGMA user_version").fetchone()
        if version == SCHEMA_VERSION:
            return
        if not upgradable(version):
            raise foreign(self._path, version)
        self._transaction(
            "set up the store", "BEGIN IMMEDIATE", create_schema, self._db, self._path
        )

    def _where(self, run_id: str, what: str) -> str:
        return f"{self._path} {what} of run {run_id!r}"

    def _transaction(
        self, what: str, begin: str, op: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Run `op` in one transaction (`BEGIN` reads one snapshot, `BEGIN IMMEDIATE`
        writes); roll back on any error, and turn sqlite3's errors into ours."""
        with self._lock:
            try:
                self._db.execute(begin)
                try:
                    result = op(*args, **kwargs)
                    self._db.execute("COMMIT")
                except BaseException:
                    if self._db.in_transaction:
                        self._db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise self._error(what, exc) from None
            return result

    def _error(self, what: str, exc: sqlite3.Error) -> StorageError:
        if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_BUSY:
            return StoreUnavailable(f"cannot {what}: {busy(self._path, _BUSY_TIMEOUT)}")
        why = unwritable(self._path, str(exc))
        return StorageError(
            f"cannot {what}: {why}" if why else f"cannot {what} in {self._path}: {exc}"
        )

    async def ping(self, within: float) -> None:
        """The file was opened with the store: it answers."""

    async def close(self) -> None:
        if self._checkpoints is not None:
            self._checkpoints.stop()
        with self._lock:
            self._db.close()
