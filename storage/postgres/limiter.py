"""Rate limits in the Postgres store: `rate_acquire()` (sql/) keeps `ratelimit.lua`'s rules
on the server's clock, one transaction per call (tables `rate_state`, `rate_slots`). A slot
whose holder is provably dead is freed at once (`storage.process`)."""

from __future__ import annotations

from .._capabilities import Bucket
from ..process import free_dead
from ._connections import Connections

__all__ = ["PostgresLimiter"]


class PostgresLimiter:
    def __init__(self, db: Connections, schema: str) -> None:
        self._db = db
        self._s = schema

    async def acquire(self, key: str, bucket: Bucket, holder: str) -> tuple[float, str]:
        sql = f"SELECT * FROM {self._s}.rate_acquire($1, $2, $3, $4, $5, $6, $7, $8, $9)"
        b = bucket

        async def attempt(dead: list[str]) -> tuple[tuple[float, str], list[str]]:
            row = await self._db.call(
                f"rate limit {key!r}",
                lambda c: c.fetchrow(
                    sql, key, b.rate, b.burst, b.token_rate, b.token_burst, b.concurrency,
                    holder, b.slot_ttl, dead,
                ),
            )  # fmt: skip
            return (float(row["o_wait"]), str(row["o_why"])), list(row["o_holders"])

        return await free_dead(attempt)

    async def release(self, key: str, holder: str, tokens: int) -> None:
        await self._db.call(
            f"rate limit {key!r}",
            lambda c: c.execute(f"SELECT {self._s}.rate_release($1, $2, $3)", key, holder, tokens),
        )

    async def pause(self, key: str, seconds: float) -> None:
        await self._db.call(
            f"rate limit {key!r}",
            lambda c: c.execute(
                f"INSERT INTO {self._s}.rate_state (key, pause)"
                f" VALUES ($1, {self._s}.clock() + $2) ON CONFLICT (key)"
                " DO UPDATE SET pause = greatest(rate_state.pause, excluded.pause)",
                key, seconds,
            ),
        )  # fmt: skip
