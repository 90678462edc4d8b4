"""Scope ledgers and set limits in the embedded store (see `storage._capabilities.Ledger`).

Tables, created IF NOT EXISTS when the store opens (no schema version step): `scope_usage`,
`scope_charges` (the event keys charged, once each), `limits`. A commit with a scope charge
makes it in its own transaction (`charge_rows`).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .._capabilities import ScopeCharge, ScopeLedger, check_scope

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
    """CREATE TABLE IF NOT EXISTS limits (
        subject TEXT NOT NULL, name TEXT NOT NULL, value INTEGER NOT NULL,
        PRIMARY KEY (subject, name)
    ) WITHOUT ROWID""",
]


def create_tables(db: sqlite3.Connection) -> None:
    for statement in _TABLES:
        db.execute(statement)


def charge_rows(
    db: sqlite3.Connection, charge: ScopeCharge, key: str, usage: Mapping[str, int]
) -> bool:
    """Charge `usage` under `key` in the open transaction of `db`; False when `key` was
    charged before (nothing written)."""
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
        rows = self._store._transaction(
            "read a scope's usage", "BEGIN", self._rows,
            "SELECT name, value FROM scope_usage WHERE scope = ? AND period = ?",
            (check_scope(scope), period),
        )  # fmt: skip
        return {str(name): int(value) for name, value in rows}

    async def scope_state(self, scope: str, period: str) -> tuple[dict[str, int], dict[str, int]]:
        return await self.scope_usage(scope, period), await self.limits(f"scope/{scope}")

    async def charge_scope(
        self, scope: str, period: str, key: str, usage: Mapping[str, int], expires_at: float
    ) -> bool:
        charge = ScopeCharge(scope=scope, period=period, expires_at=expires_at)
        charged: bool = self._store._transaction(
            f"charge scope {scope!r}", "BEGIN IMMEDIATE", charge_rows,
            self._store.connection, charge, key, usage,
        )  # fmt: skip
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
        found: dict[tuple[str, str], dict[str, Any]] = {}
        for scope, period, name, value in usage:
            item = found.setdefault((scope, period), {"usage": {}, "charged": set(), "at": 0.0})
            item["usage"][str(name)] = int(value)
        for scope, period, key, expires_at in keys:
            item = found.setdefault((scope, period), {"usage": {}, "charged": set(), "at": 0.0})
            item["charged"].add(str(key))
            item["at"] = max(item["at"], float(expires_at))
        return [
            ScopeLedger(scope=scope, period=period, usage=item["usage"],
                        charged=frozenset(item["charged"]), expires_at=item["at"])
            for (scope, period), item in sorted(found.items())
        ]  # fmt: skip

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
