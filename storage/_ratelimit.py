"""Rate limits held in the store, shared by every process that uses it.

One limit (a key: a model's name, a provider, anything) has a token bucket of requests
(`rate` per second, holding at most `burst`: in any window of w seconds at most
`burst + rate * w` requests start), one of model tokens (charged with what each request used,
after it: the bucket may go below zero, and then no request starts until it has refilled
past it), a cap on requests at once (slots that lapse after `slot_ttl`, so a process that
died holding one frees it), and a pause: a provider's 429 with Retry-After stops the key for
everyone until then.

Redis: `ratelimit.lua` on the server's clock, keys `{prefix}:{$rate:<key>}` (hash) and
`...:slots` (sorted set), one hash tag. Embedded: the same in one `BEGIN IMMEDIATE`
transaction over the shared file, on the wall clock every process of the machine shares
(tables `rate_state`, `rate_slots`, created IF NOT EXISTS when the store opens).
"""

from __future__ import annotations

import math
import sqlite3
import time
from dataclasses import dataclass
from importlib.resources import files
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .base import Store
    from .embedded import EmbeddedStore
    from .redis import RedisStore

__all__ = ["Bucket", "Limiter", "create_tables", "limiter_of"]

_TABLES = [
    """CREATE TABLE IF NOT EXISTS rate_state (
        key TEXT NOT NULL, field TEXT NOT NULL, value REAL NOT NULL, PRIMARY KEY (key, field)
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS rate_slots (
        key TEXT NOT NULL, holder TEXT NOT NULL, until REAL NOT NULL, PRIMARY KEY (key, holder)
    ) WITHOUT ROWID""",
]


@dataclass(frozen=True, kw_only=True, slots=True)
class Bucket:
    """One limit's settings (0: no limit of that kind)."""

    rate: float = 0.0
    """Requests per second."""
    burst: float = 1.0
    token_rate: float = 0.0
    """Model tokens per second."""
    token_burst: float = 0.0
    concurrency: int = 0
    slot_ttl: float = 300.0
    """Seconds after which a slot a holder never gave back lapses."""


class Limiter(Protocol):
    async def acquire(self, key: str, bucket: Bucket, holder: str) -> tuple[float, str]:
        """Take a request slot: (0, "") when taken, else (seconds to wait, why)."""
        ...

    async def release(self, key: str, holder: str, tokens: int) -> None:
        """Give the slot back and charge the model tokens the request used."""
        ...

    async def pause(self, key: str, seconds: float) -> None:
        """Let no request of `key` start, in any process, for `seconds` from now."""
        ...


def limiter_of(store: Store) -> Limiter:
    from .embedded import EmbeddedStore
    from .redis import RedisStore

    if isinstance(store, RedisStore):
        return _RedisLimiter(store)
    if isinstance(store, EmbeddedStore):
        return _EmbeddedLimiter(store)
    raise TypeError(f"no rate limiter for a {type(store).__name__}")


def create_tables(db: sqlite3.Connection) -> None:
    for statement in _TABLES:
        db.execute(statement)


class _RedisLimiter:
    _scripts: dict[int, Any] = {}  # noqa: RUF012  (per client: scripts bind to one)

    def __init__(self, store: RedisStore) -> None:
        self._store = store

    def _call(self, key: str, args: list[Any]) -> Any:
        client = self._store.client
        script = self._scripts.get(id(client))
        if script is None or script.registered_client is not client:
            text = files(__package__).joinpath("ratelimit.lua").read_text(encoding="utf-8")
            script = self._scripts[id(client)] = client.register_script(text)
        base = f"{self._store.prefix}:{{$rate:{key}}}"
        return self._store._call(
            f"rate limit {key!r}", lambda: script(keys=[base, f"{base}:slots"], args=args)
        )

    async def acquire(self, key: str, bucket: Bucket, holder: str) -> tuple[float, str]:
        reply = await self._call(
            key,
            ["acquire", bucket.rate, bucket.burst, bucket.token_rate, bucket.token_burst,
             bucket.concurrency, holder, int(bucket.slot_ttl * 1000)],
        )  # fmt: skip
        return (0.0, "") if int(reply[0]) == 1 else (int(reply[1]) / 1000, str(reply[2]))

    async def release(self, key: str, holder: str, tokens: int) -> None:
        await self._call(key, ["release", holder, tokens])

    async def pause(self, key: str, seconds: float) -> None:
        await self._call(key, ["pause", 0, seconds])


class _EmbeddedLimiter:
    def __init__(self, store: EmbeddedStore) -> None:
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
            (held,) = db.execute("SELECT count(*) FROM rate_slots WHERE key = ?", (key,)).fetchone()
            if held >= b.concurrency:
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
