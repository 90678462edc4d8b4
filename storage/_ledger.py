"""Ledgers beside the runs: usage per scope and period (shared by many runs), and limits
set by people (a raised budget), kept in the same store.

A scope charge is idempotent by the committed event's key: the runner charges after the
run's commit, and again for the run's last committed event whenever a process picks the run
up, so a crash between a commit and its scope charge neither loses the charge (the next
holder makes it) nor counts it twice (the key was recorded with the first charge, in the
same atomic write: Redis `scope_charge.lua`, embedded one transaction).

Redis keys (one hash tag per scope and period, so the charge script touches one Cluster
slot; `$` is in no run id, so no key of a run can be one of these):

    {prefix}:{$scope:<scope>:<period>}:usage     hash   u:<name> -> total
    {prefix}:{$scope:<scope>:<period>}:charged   hash   event key -> 1
    {prefix}:{$limits:<subject>}                 hash   name -> limit

Embedded tables, created IF NOT EXISTS when the store opens (no schema version step):
`scope_usage`, `scope_charges`, `limits`.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Mapping
from importlib.resources import files
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .base import Store
    from .embedded import EmbeddedStore
    from .redis import RedisStore

__all__ = ["Ledger", "check_scope", "create_tables", "ledger_of", "scope_keys"]

_SCOPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@/-]{0,199}")
_TABLES = [
    """CREATE TABLE IF NOT EXISTS scope_usage (
        scope TEXT NOT NULL, period TEXT NOT NULL, name TEXT NOT NULL, value INTEGER NOT NULL,
        PRIMARY KEY (scope, period, name)
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS scope_charges (
        scope TEXT NOT NULL, period TEXT NOT NULL, key TEXT NOT NULL, expires_at REAL NOT NULL,
        PRIMARY KEY (scope, period, key)
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS limits (
        subject TEXT NOT NULL, name TEXT NOT NULL, value INTEGER NOT NULL,
        PRIMARY KEY (subject, name)
    ) WITHOUT ROWID""",
]


def check_scope(scope: str) -> str:
    """`scope` if usable as a ledger name, else `ValueError` saying why."""
    if not isinstance(scope, str) or not _SCOPE.fullmatch(scope):
        raise ValueError(
            f"invalid budget scope {scope!r}: use 1-200 characters from letters, digits and"
            " . _ : @ / -, starting with a letter or digit"
        )
    return scope


class Ledger(Protocol):
    """Scope usage and limits in one store (see the module docstring)."""

    async def scope_usage(self, scope: str, period: str) -> dict[str, int]:
        """The scope's totals for `period` ({} when nothing was charged)."""
        ...

    async def charge_scope(
        self, scope: str, period: str, key: str, usage: Mapping[str, int], expires_at: float
    ) -> bool:
        """Add `usage` to the scope's totals for `period` unless `key` was charged there
        before; True when charged. The ledger may forget the period after `expires_at`."""
        ...

    async def limits(self, subject: str) -> dict[str, int]:
        """Limits people set for `subject` ("run/<id>", "scope/<name>")."""
        ...

    async def set_limits(self, subject: str, limits: Mapping[str, int | None]) -> None:
        """Set (or with None remove) limits of `subject`."""
        ...


def ledger_of(store: Store) -> Ledger:
    """The ledger kept in `store` (a `RedisStore` or an `EmbeddedStore`)."""
    from .embedded import EmbeddedStore
    from .redis import RedisStore

    if isinstance(store, RedisStore):
        return _RedisLedger(store)
    if isinstance(store, EmbeddedStore):
        return _EmbeddedLedger(store)
    raise TypeError(f"no usage ledger for a {type(store).__name__}")


def scope_keys(prefix: str, scope: str, period: str) -> list[str]:
    """The Redis keys of a scope's ledger for one period: its usage, its charged keys."""
    base = f"{prefix}:{{$scope:{check_scope(scope)}:{period}}}"
    return [f"{base}:usage", f"{base}:charged"]


def create_tables(db: sqlite3.Connection) -> None:
    for statement in _TABLES:
        db.execute(statement)


class _RedisLedger:
    def __init__(self, store: RedisStore) -> None:
        self._store = store
        self._script: Any = None

    def _keys(self, scope: str, period: str) -> list[str]:
        return scope_keys(self._store.prefix, scope, period)

    def _limits_key(self, subject: str) -> str:
        return f"{self._store.prefix}:{{$limits:{subject}}}"

    async def scope_usage(self, scope: str, period: str) -> dict[str, int]:
        key = self._keys(scope, period)[0]
        raw: dict[str, str] = await self._store._call(
            "read a scope's usage", lambda: self._store.client.hgetall(key), key=key
        )
        return {k[2:]: int(v) for k, v in raw.items() if k.startswith("u:")}

    async def charge_scope(
        self, scope: str, period: str, key: str, usage: Mapping[str, int], expires_at: float
    ) -> bool:
        client = self._store.client
        if self._script is None or self._script.registered_client is not client:
            text = files(__package__).joinpath("scope_charge.lua").read_text(encoding="utf-8")
            self._script = client.register_script(text)
        args: list[Any] = [key, max(int(expires_at * 1000), 0)]
        for name, value in usage.items():
            args += [name, int(value)]
        keys = self._keys(scope, period)
        done = await self._store._call(
            f"charge scope {scope!r}", lambda: self._script(keys=keys, args=args)
        )
        return bool(done)

    async def limits(self, subject: str) -> dict[str, int]:
        key = self._limits_key(subject)
        raw: dict[str, str] = await self._store._call(
            "read limits", lambda: self._store.client.hgetall(key), key=key
        )
        return {k: int(v) for k, v in raw.items()}

    async def set_limits(self, subject: str, limits: Mapping[str, int | None]) -> None:
        key = self._limits_key(subject)
        gone = [k for k, v in limits.items() if v is None]
        kept: dict[Any, Any] = {k: int(v) for k, v in limits.items() if v is not None}

        async def write() -> None:
            pipe = self._store.client.pipeline(transaction=True)
            if gone:
                pipe.hdel(key, *gone)
            if kept:
                pipe.hset(key, mapping=kept)
            await pipe.execute()

        await self._store._call("set limits", write)


class _EmbeddedLedger:
    def __init__(self, store: EmbeddedStore) -> None:
        self._store = store

    def _rows(self, query: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        return self._store.connection.execute(query, params).fetchall()

    async def scope_usage(self, scope: str, period: str) -> dict[str, int]:
        rows = self._store._transaction(
            "read a scope's usage", "BEGIN", self._rows,
            "SELECT name, value FROM scope_usage WHERE scope = ? AND period = ?",
            (check_scope(scope), period),
        )  # fmt: skip
        return {str(name): int(value) for name, value in rows}

    async def charge_scope(
        self, scope: str, period: str, key: str, usage: Mapping[str, int], expires_at: float
    ) -> bool:
        from ._charge import ScopeCharge, charge_rows

        charge = ScopeCharge(scope=scope, period=period, expires_at=expires_at)

        def write() -> bool:
            return charge_rows(self._store.connection, charge, key, usage)

        charged: bool = self._store._transaction(
            f"charge scope {scope!r}", "BEGIN IMMEDIATE", write
        )
        return charged

    async def limits(self, subject: str) -> dict[str, int]:
        rows = self._store._transaction(
            "read limits", "BEGIN", self._rows,
            "SELECT name, value FROM limits WHERE subject = ?", (subject,),
        )  # fmt: skip
        return {str(name): int(value) for name, value in rows}

    async def set_limits(self, subject: str, limits: Mapping[str, int | None]) -> None:
        def write() -> None:
            db = self._store.connection
            for name, value in limits.items():
                if value is None:
                    db.execute("DELETE FROM limits WHERE subject = ? AND name = ?", (subject, name))
                else:
                    db.execute(
                        "INSERT INTO limits VALUES (?, ?, ?) ON CONFLICT (subject, name)"
                        " DO UPDATE SET value = excluded.value",
                        (subject, name, int(value)),
                    )

        self._store._transaction("set limits", "BEGIN IMMEDIATE", write)
