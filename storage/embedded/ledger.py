"""Scope ledgers and set limits in the embedded store (see `storage._capabilities.Ledger`).

Tables, created IF NOT EXISTS when the store opens (no schema version step): `scope_usage`,
`scope_charges` (the event keys charged, once each), `scope_held` (reservations of requests in
flight, on the wall clock every process of the machine shares, as rate limits), `limits`. A
commit with a scope charge makes it, and drops the run's reservation, in its own transaction
(`charge_rows`); `reserve` is one `BEGIN IMMEDIATE` transaction over the shared file.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .._capabilities import Reservation, ScopeCharge, ScopeLedger, check_scope, scope_ledgers_of
from ..usage import with_total

if TYPE_CHECKING:
    from ._db import Database

__all__ = ["EmbeddedLedger", "charge_rows", "create_tables"]

_TABLES = [
    """CREATE TABLE IF NOT EXISTS scope_usage (
        scope TEXT NOT NULL, period TEXT NOT NULL, name TEXT NOT NULL, value INTEGER NOT NULL,
        PRIMARY KEY (scope, period, name)
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS scope_charges (
        scope TEXT NOT NULL, period TEXT NOT NULL, key TEXT NOT NULL, expires_at REAL NOT NULL,
        PRIMARY KEY (scope, period, key)
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS scope_held (
        scope TEXT NOT NULL, period TEXT NOT NULL, holder TEXT NOT NULL,
        requests INTEGER NOT NULL, until REAL NOT NULL, PRIMARY KEY (scope, period, holder)
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS limits (
        subject TEXT NOT NULL, name TEXT NOT NULL, value INTEGER NOT NULL,
        PRIMARY KEY (subject, name)
    ) WITHOUT ROWID""",
]


def create_tables(db: sqlite3.Connection) -> None:
    for statement in _TABLES:
        db.execute(statement)


def charge_rows(
    db: sqlite3.Connection,
    charge: ScopeCharge,
    key: str,
    usage: Mapping[str, int],
    holder: str = "",
) -> bool:
    """Charge `usage` under `key` in the open transaction of `db`, and drop the reservation
    of run `holder`; False when `key` was charged before (nothing charged)."""
    db.execute(
        "DELETE FROM scope_held WHERE scope = ? AND period = ? AND holder = ?",
        (charge.scope, charge.period, holder),
    )
    added = db.execute(
        "INSERT INTO scope_charges VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
        (charge.scope, charge.period, key, charge.expires_at),
    )
    if added.rowcount != 1:
        return False
    db.executemany(
        "INSERT INTO scope_usage VALUES (?, ?, ?, ?) ON CONFLICT (scope, period, name)"
        " DO UPDATE SET value = value + excluded.value",
        [(charge.scope, charge.period, name, int(v)) for name, v in usage.items()],
    )
    return True


class EmbeddedLedger:
    def __init__(self, store: Database) -> None:
        self._store = store

    def _rows(self, query: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        return self._store.connection.execute(query, params).fetchall()

    async def scope_usage(self, scope: str, period: str) -> dict[str, int]:
        check_scope(scope)
        got: dict[str, int] = self._store._transaction(
            "read a scope's usage", "BEGIN", self._usage, scope, period
        )
        return got

    async def reserve(
        self,
        scope: str,
        period: str,
        holder: str,
        limits: Mapping[str, int],
        ttl: float,
        *,
        spent: Mapping[str, int] | None = None,
    ) -> Reservation:
        check_scope(scope)
        got: Reservation = self._store._transaction(
            f"reserve a request of scope {scope!r}", "BEGIN IMMEDIATE", self._reserve,
            scope, period, holder, limits, ttl, spent or {},
        )  # fmt: skip
        return got

    def _reserve(
        self,
        scope: str,
        period: str,
        holder: str,
        limits: Mapping[str, int],
        ttl: float,
        spent: Mapping[str, int],
    ) -> Reservation:
        # As reserve.lua.
        db, now, where = self._store.connection, time.time(), (scope, period)
        in_force = {name: int(v) for name, v in limits.items()}
        in_force.update(self._limits(f"scope/{scope}"))
        used = self._usage(scope, period)
        for name, value in spent.items():
            if value:
                used[name] = used.get(name, 0) + int(value)
        db.execute("DELETE FROM scope_held WHERE scope = ? AND period = ? AND until <= ?",
                   (*where, now))  # fmt: skip
        mine = 0
        for other, count in db.execute(
            "SELECT holder, requests FROM scope_held WHERE scope = ? AND period = ?", where
        ).fetchall():
            if other == holder:
                mine = int(count)
            else:
                used["requests"] = used.get("requests", 0) + int(count)
        used = with_total(used)
        want = int(spent.get("requests", 0)) + 1
        admitted = mine >= want or all(
            used.get(name, 0) < limit for name, limit in in_force.items()
        )
        if admitted:
            db.execute(
                "INSERT INTO scope_held VALUES (?, ?, ?, ?, ?) ON CONFLICT (scope, period, holder)"
                " DO UPDATE SET requests = excluded.requests, until = excluded.until",
                (*where, holder, max(mine, want), now + ttl),
            )
        return Reservation(admitted=admitted, used=used, limits=in_force)

    async def release(self, scope: str, period: str, holder: str, *, keep: int = 0) -> None:
        def write() -> None:
            where = (scope, period, holder)
            if keep > 0:
                self._store.connection.execute(
                    "UPDATE scope_held SET requests = ?"
                    " WHERE scope = ? AND period = ? AND holder = ?",
                    (int(keep), *where),
                )
            else:
                self._store.connection.execute(
                    "DELETE FROM scope_held WHERE scope = ? AND period = ? AND holder = ?", where
                )

        self._store._transaction(f"release a request of scope {scope!r}", "BEGIN IMMEDIATE", write)

    def _usage(self, scope: str, period: str) -> dict[str, int]:
        rows = self._rows(
            "SELECT name, value FROM scope_usage WHERE scope = ? AND period = ?", (scope, period)
        )
        return {str(name): int(value) for name, value in rows}

    def _limits(self, subject: str) -> dict[str, int]:
        rows = self._rows("SELECT name, value FROM limits WHERE subject = ?", (subject,))
        return {str(name): int(value) for name, value in rows}

    async def charge_scope(
        self,
        scope: str,
        period: str,
        key: str,
        usage: Mapping[str, int],
        expires_at: float,
        *,
        holder: str = "",
    ) -> bool:
        charge = ScopeCharge(scope=scope, period=period, expires_at=expires_at)
        charged: bool = self._store._transaction(
            f"charge scope {scope!r}", "BEGIN IMMEDIATE", charge_rows,
            self._store.connection, charge, key, usage, holder,
        )  # fmt: skip
        return charged

    async def limits(self, subject: str) -> dict[str, int]:
        got: dict[str, int] = self._store._transaction(
            "read limits", "BEGIN", self._limits, subject
        )
        return got

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

    async def all_limits(self) -> dict[str, dict[str, int]]:
        rows = self._store._transaction(
            "list limits", "BEGIN", self._rows,
            "SELECT subject, name, value FROM limits ORDER BY subject, name", (),
        )  # fmt: skip
        found: dict[str, dict[str, int]] = {}
        for subject, name, value in rows:
            found.setdefault(str(subject), {})[str(name)] = int(value)
        return found

    async def scope_ledgers(self) -> list[ScopeLedger]:
        def read() -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
            db = self._store.connection
            usage = db.execute("SELECT scope, period, name, value FROM scope_usage").fetchall()
            keys = db.execute("SELECT scope, period, key, expires_at FROM scope_charges").fetchall()
            return usage, keys

        usage, keys = self._store._transaction("list scope ledgers", "BEGIN", read)
        return scope_ledgers_of(usage, keys)

    async def put_scope_ledger(self, ledger: ScopeLedger) -> None:
        def write() -> None:
            db = self._store.connection
            where = (ledger.scope, ledger.period)
            db.execute("DELETE FROM scope_usage WHERE scope = ? AND period = ?", where)
            db.execute("DELETE FROM scope_charges WHERE scope = ? AND period = ?", where)
            db.executemany(
                "INSERT INTO scope_usage VALUES (?, ?, ?, ?)",
                [(*where, name, int(v)) for name, v in ledger.usage.items()],
            )
            db.executemany(
                "INSERT INTO scope_charges VALUES (?, ?, ?, ?)",
                [(*where, key, ledger.expires_at) for key in sorted(ledger.charged)],
            )

        check_scope(ledger.scope)
        self._store._transaction(f"restore scope {ledger.scope!r}", "BEGIN IMMEDIATE", write)
