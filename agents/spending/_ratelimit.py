"""Shared rate limits on model requests: `Agent(rate_limits=[RateLimit(...)])`.

Each limit is held in the run's store (`Store.limiter`), so every process and worker on
that store shares it. Before each model request of an `llm()` step the step takes a slot of
every limit (waiting as long as a limit says; each wait is reported to `on_wait` listeners,
which the CLI shows as a status line), and gives it back after the request with the tokens it
used. A provider's 429 with Retry-After pauses the key for everyone until then. Waiting for a
slot does not count against the step's `timeout` unless the limit says `counts_against_timeout`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

from statemachine import StepContext
from storage import Store
from storage.base import Bucket
from storage.process import owner_id

__all__ = ["RateLimit", "on_wait", "rate_limited"]

_log = logging.getLogger("agentfsm.ratelimit")
on_wait: list[Callable[[str, float, str], None]] = []
"""Called with (key, seconds, why) whenever a request waits for a limit (the CLI's status)."""
DEFAULT_RETRY_AFTER = 1.0
"""Seconds a 429 without a Retry-After pauses its key."""


@dataclass(frozen=True, kw_only=True, slots=True)
class RateLimit:
    """Limits shared by every process on the store. `key` None: one limit per model (the
    step's model name); any other text: one limit for every step that names it."""

    key: str | None = None
    requests_per_second: float | None = None
    requests_per_minute: float | None = None
    burst: float = 1.0
    """Requests that may start at once after a quiet spell: in any window of w seconds at
    most `burst + rate * w` start."""
    tokens_per_minute: float | None = None
    concurrency: int | None = None
    counts_against_timeout: bool = False

    def __post_init__(self) -> None:
        if self.requests_per_second is not None and self.requests_per_minute is not None:
            raise ValueError("RateLimit: give requests_per_second or requests_per_minute")
        if self.burst < 1:
            raise ValueError(f"RateLimit(burst=...) must be at least 1, not {self.burst}")

    def bucket(self) -> Bucket:
        rate = self.requests_per_second or (self.requests_per_minute or 0) / 60
        tokens = (self.tokens_per_minute or 0) / 60
        return Bucket(rate=rate, burst=self.burst, token_rate=tokens,
                      token_burst=self.tokens_per_minute or 0,
                      concurrency=self.concurrency or 0)  # fmt: skip

    def key_for(self, model: str) -> str:
        return self.key or model


async def _take(store: Store, limit: RateLimit, key: str, holder: str) -> None:
    limiter = store.limiter
    bucket = limit.bucket()
    while True:
        wait, why = await limiter.acquire(key, bucket, holder)
        if not wait:
            return
        _log.info("waiting %.3f s for rate limit %s (%s)", wait, key, why)
        for listener in on_wait:
            listener(key, wait, why)
        await asyncio.sleep(min(wait, 5.0))


@contextlib.asynccontextmanager
async def rate_limited(
    ctx: StepContext, limits: Sequence[RateLimit], model: str, seconds: float | None
) -> AsyncIterator[Callable[[int], None]]:
    """Hold a slot of every limit around one model request; yields a function to report
    the tokens the request used. `seconds` (the step's timeout) bounds the waiting of
    limits that count against it (`TimeoutError`)."""
    # Here, not at the top: a table agent without an LLM step never imports pydantic-ai.
    from pydantic_ai.exceptions import ModelHTTPError, ModelRateLimitError

    store = ctx.store
    if store is None or not limits:
        yield lambda tokens: None
        return
    holder = f"{owner_id()}:{ctx.idempotency_key}"
    taken: list[str] = []
    used = [0]
    try:
        for limit in limits:
            key = limit.key_for(model)
            take = _take(store, limit, key, holder)
            if limit.counts_against_timeout and seconds is not None:
                await asyncio.wait_for(take, seconds)
            else:
                await take
            taken.append(key)
        try:
            yield lambda tokens: used.__setitem__(0, tokens)
        except (ModelHTTPError, ModelRateLimitError) as exc:
            if isinstance(exc, ModelRateLimitError) or exc.status_code == 429:
                pause = exc.retry_after if exc.retry_after is not None else DEFAULT_RETRY_AFTER
                for key in taken:
                    await store.limiter.pause(key, pause)
            raise
    finally:
        for key in taken:
            with contextlib.suppress(Exception):
                await store.limiter.release(key, holder, used[0])
