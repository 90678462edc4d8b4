"""Rate limits on Redis: `scripts/ratelimit.lua` on the server's clock, keys
`{prefix}:{$rate:<key>}` (hash) and `...:slots` (sorted set: holder -> when its slot lapses),
one hash tag. A slot whose holder is provably dead is freed at once (`storage.process`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._capabilities import Bucket
from ..process import free_dead
from ._errors import talking

if TYPE_CHECKING:
    from ._base import RedisBase

__all__ = ["RedisLimiter"]


class RedisLimiter:
    def __init__(self, store: RedisBase) -> None:
        self._store = store

    async def _run(self, key: str, args: list[Any]) -> Any:
        base = f"{self._store.prefix}:{{$rate:{key}}}"
        async with talking(self._store, f"rate limit {key!r}"):
            return await self._store.script("ratelimit")(keys=[base, f"{base}:slots"], args=args)

    async def acquire(self, key: str, bucket: Bucket, holder: str) -> tuple[float, str]:

        async def attempt(dead: list[str]) -> tuple[tuple[float, str], list[str]]:
            reply = await self._run(
                key,
                [
                    "acquire",
                    bucket.rate,
                    bucket.burst,
                    bucket.token_rate,
                    bucket.token_burst,
                    bucket.concurrency,
                    holder,
                    int(bucket.slot_ttl * 1000),
                    *dead,
                ],
            )  # fmt: skip  (the slots of `dead` are dropped first)
            if int(reply[0]) == 1:
                return (0.0, ""), []
            return (int(reply[1]) / 1000, str(reply[2])), [str(h) for h in reply[3:]]

        return await free_dead(attempt)

    async def release(self, key: str, holder: str, tokens: int) -> None:
        await self._run(key, ["release", holder, tokens])

    async def pause(self, key: str, seconds: float) -> None:
        await self._run(key, ["pause", 0, seconds])
