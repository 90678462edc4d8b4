"""Rate limits in the embedded store: `ratelimit.lua`'s rules in one `BEGIN IMMEDIATE`
transaction over the shared file, on the wall clock every process of the machine shares
(tables `rate_state`, `rate_slots`, created IF NOT EXISTS when the store opens). A slot whose
holder is provably dead is freed at once (`storage.process`)."""

from __future__ import annotations

import math
import sqlite3
import time
from typing import TYPE_CHECKING

from .._capabilities import Bucket
from ..process import provably_dead

if TYPE_CHECKING:
    from ._db import Database

__all__ = ["EmbeddedLimiter", "create_tables"]

_TABLES = [
    """CREATE TABLE IF NOT EXISTS rate_state (
        key TEXT NOT NULL, field TEXT NOT NULL, value REAL NOT NULL, PRIMARY KEY (key, field)
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS rate_slots (
        key TEXT NOT NULL, holder TEXT NOT NULL, until REAL NOT NULL, PRIMARY KEY (key, holder)
    ) WITHOUT ROWID""",
]


def create_tables(db: sqlite3.Connection) -> None:
    for statement in _TABLES:
        db.execute(statement)


class EmbeddedLimiter:
    def __init__(self, store: Database) -> None:
        self._store = store

    def _get(self, key: str, field: str) -> float | None:
        row = self._store.connection.execute(
            "SELECT value FROM rate_state WHERE key = ? AND field = ?", (key, field)
        ).fetchone()
        return None if row is None else float(row[0])

    def _set(self, key: str, **values: float) -> None:
        self._store.connection.executemany(
            "INSERT INTO rate_state VALUES (?, ?, ?) ON CONFLICT (key, field)"
            " DO UPDATE SET value = excluded.value",
            [(key, f, v) for f, v in values.items()],
        )

    def _acquire(self, key: str, b: Bucket, holder: str) -> tuple[float, str]:
        # As ratelimit.lua, in seconds.
        db, now = self._store.connection, time.time()
        pause = self._get(key, "pause") or 0.0
        if pause > now:
            return pause - now, "paused"
        if b.concurrency:
            db.execute("DELETE FROM rate_slots WHERE key = ? AND until <= ?", (key, now))
            held = [h for (h,) in db.execute("SELECT holder FROM rate_slots WHERE key = ?", (key,))]
            if len(held) >= b.concurrency:
                dead = [(key, h) for h in held if provably_dead(h)]
                db.executemany("DELETE FROM rate_slots WHERE key = ? AND holder = ?", dead)
                if len(held) - len(dead) >= b.concurrency:
                    return 0.02, "concurrency"

        def refill(field: str, stamp: str, rate: float, burst: float) -> float:
            level = self._get(key, field)
            since = self._get(key, stamp)
            level = burst if level is None else level
            return min(burst, level + (now - (now if since is None else since)) * rate)

        r = k = None
        if b.rate:
            r = refill("r", "rt", b.rate, b.burst)
            if r < 1:
                return math.ceil((1 - r) * 1000 / b.rate) / 1000, "requests"
        if b.token_rate:
            k = refill("k", "kt", b.token_rate, b.token_burst)
            if k <= 0:
                return math.ceil((1 - k) * 1000 / b.token_rate) / 1000, "tokens"
        if r is not None:
            self._set(key, r=r - 1, rt=now)
        if k is not None:
            self._set(key, k=k, kt=now)
        if b.concurrency:
            db.execute(
                "INSERT INTO rate_slots VALUES (?, ?, ?) ON CONFLICT (key, holder)"
                " DO UPDATE SET until = excluded.until",
                (key, holder, now + b.slot_ttl),
            )
        return 0.0, ""

    async def acquire(self, key: str, bucket: Bucket, holder: str) -> tuple[float, str]:
        got: tuple[float, str] = self._store._transaction(
            f"rate limit {key!r}", "BEGIN IMMEDIATE", self._acquire, key, bucket, holder
        )
        return got

    def _release(self, key: str, holder: str, tokens: int) -> None:
        self._store.connection.execute(
            "DELETE FROM rate_slots WHERE key = ? AND holder = ?", (key, holder)
        )
        level = self._get(key, "k")
        if tokens and level is not None:
            self._set(key, k=level - tokens)

    async def release(self, key: str, holder: str, tokens: int) -> None:
        self._store._transaction(
            f"rate limit {key!r}", "BEGIN IMMEDIATE", self._release, key, holder, tokens
        )

    def _pause(self, key: str, seconds: float) -> None:
        until = time.time() + seconds
        if until > (self._get(key, "pause") or 0.0):
            self._set(key, pause=until)

    async def pause(self, key: str, seconds: float) -> None:
        self._store._transaction(
            f"rate limit {key!r}", "BEGIN IMMEDIATE", self._pause, key, seconds
        )
