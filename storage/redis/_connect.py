"""Connecting to Redis: URLs and their options, key prefixes, retries with a time budget.

A store made from a URL knows how to make a new client (for a new event loop: a
`redis.asyncio` client is bound to the loop it first connected on).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import ssl
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextvars import ContextVar
from typing import Any, TypeAlias
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.connection import URL_QUERY_ARGUMENT_PARSERS
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import AuthenticationError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..url import redact
from ._connection import send_in_task

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_RETRY_FOR",
    "DEFAULT_SOCKET_TIMEOUT",
    "PREFIX_ALPHABET",
    "Client",
    "check_prefix",
    "close_with_loop",
    "connector",
    "redact",
    "tls_failure",
]

DEFAULT_MAX_CONNECTIONS = 500
"""Connections a standalone store's pool opens at most (per process)."""

DEFAULT_SOCKET_TIMEOUT = 3.0
"""Seconds a command waits for its reply (`?socket_timeout=`)."""
DEFAULT_CONNECT_TIMEOUT = 2.0
"""Seconds a connection attempt waits (`?socket_connect_timeout=`)."""
DEFAULT_RETRY_FOR = 5.0
"""Seconds within which failed calls are tried again (`?retry_for=`): no new try starts
after it, so an unreachable or silent server fails a call in about 6 s at most."""
PREFIX_ALPHABET = "letters, digits, _ . - (1-64 of them, starting with a letter or digit)"
_PREFIX = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_OUR_OPTIONS = ("prefix", "retries", "retry_for")
_STRING_OPTIONS = frozenset(
    {"client_name", "username", "password", "ssl_keyfile", "ssl_certfile", "ssl_cert_reqs",
     "ssl_ca_certs", "ssl_ca_data", "ssl_ca_path", "ssl_ciphers", "ssl_password", "path"}
)  # fmt: skip
_NUMBER_OPTIONS = ("socket_timeout", "socket_connect_timeout", "max_connections", "retry_for")

Client: TypeAlias = "aioredis.Redis | aioredis.RedisCluster"
"""A redis-py asyncio client: standalone or Cluster."""


def check_prefix(prefix: str) -> str:
    """`prefix` if it is a valid key prefix, else `ValueError` saying why and what to do."""
    if not isinstance(prefix, str) or not _PREFIX.fullmatch(prefix):
        raise ValueError(
            f"invalid key prefix {prefix!r}: use {PREFIX_ALPHABET}, so that no tenant's keys"
            " can match another's patterns. Runs stored under an older agentfsm with such a"
            " prefix move to a valid one with `python -m storage.rekey REDIS_URL OLD NEW`"
        )
    return prefix


def connector(url: str, prefix: str, retries: int) -> tuple[Callable[[], Client], str, str]:
    """How to connect to `url` (see `RedisStore.from_url`), the prefix it names (a
    `?prefix=` wins over `prefix`), and the URL without its password."""
    parts = urlsplit(url)
    scheme, _, cluster = parts.scheme.partition("+")
    if cluster not in ("", "cluster"):
        raise ValueError(f"unknown Redis URL scheme {parts.scheme!r} in {redact(url)!r}")
    query = parse_qsl(parts.query, keep_blank_values=True)
    _check_url(url, scheme, parts.path, query)
    ours = dict((k, v) for k, v in query if k in _OUR_OPTIONS)
    prefix = ours.get("prefix", prefix)
    retries = int(ours["retries"]) if "retries" in ours else retries
    retry_for = float(ours.get("retry_for", DEFAULT_RETRY_FOR))
    plain = urlunsplit(
        parts._replace(
            scheme=scheme,
            query=urlencode([(k, v) for k, v in query if k not in _OUR_OPTIONS]),
        )
    )
    check_prefix(prefix)

    def connect() -> Client:
        retry = _Retry(ExponentialWithJitterBackoff(base=0.05, cap=1.0), retries, retry_for)
        options: dict[str, Any] = {
            "decode_responses": True,
            "retry": retry,
            "retry_on_error": [RedisConnectionError, RedisTimeoutError],
            "socket_connect_timeout": DEFAULT_CONNECT_TIMEOUT,
            "socket_timeout": DEFAULT_SOCKET_TIMEOUT,
        }
        if cluster:
            return aioredis.RedisCluster.from_url(plain, **options)
        pool = aioredis.BlockingConnectionPool.from_url(plain, **options)
        send_in_task(pool)
        if "max_connections" not in dict(query):
            pool.max_connections = DEFAULT_MAX_CONNECTIONS
        return aioredis.Redis.from_pool(pool)  # closing the client closes the pool

    return connect, prefix, redact(url)


def close_with_loop(client: Client) -> AsyncGenerator[None, None]:
    """An async generator, started, that closes `client` when its event loop shuts down.

    A loop ending in `asyncio.run` closes the async generators begun on it (and alive), on
    the loop, before it closes: the client's connections are closed there, where they can
    be, not left to the garbage collector after the loop is gone."""

    async def closer() -> AsyncGenerator[None, None]:
        try:
            yield
        finally:
            with contextlib.suppress(Exception):
                await client.aclose()

    generator = closer()
    with contextlib.suppress(StopIteration):
        generator.__anext__().send(None)  # runs to the yield at once: nothing is awaited
    return generator


_retry_until: ContextVar[float | None] = ContextVar("agentfsm_redis_retry_until", default=None)
"""When the outermost retrying call in this task gives up: redis-py retries a connection's
set-up inside the retry of the command that needed it, and both share one time budget."""


class _Retry(Retry):
    """redis-py's retry with a time budget (no new try starts `retry_for` seconds after the
    first), and refused credentials or TLS failures fail at once: `AuthenticationError` is a
    `ConnectionError` to redis-py, and trying a wrong password or protocol again cannot help."""

    def __init__(self, backoff: ExponentialWithJitterBackoff, retries: int, retry_for: float):
        super().__init__(backoff, retries)
        self._retry_for = retry_for

    async def call_with_retry(
        self,
        do: Callable[[], Awaitable[Any]],
        fail: Callable[..., Any],
        is_retryable: Callable[[Exception], bool] | None = None,
        with_failure_count: bool = False,
    ) -> Any:
        outer = _retry_until.get()
        until = time.monotonic() + self._retry_for if outer is None else outer
        token = _retry_until.set(until) if outer is None else None
        try:
            failures = 0
            while True:
                try:
                    return await do()
                except (RedisConnectionError, RedisTimeoutError) as error:
                    if _hopeless(error) or (is_retryable is not None and not is_retryable(error)):
                        raise
                    failures += 1
                    await (fail(error, failures) if with_failure_count else fail(error))
                    pause = self._backoff.compute(failures)
                    if failures > self._retries or time.monotonic() + pause >= until:
                        raise
                    await asyncio.sleep(pause)
        finally:
            if token is not None:
                _retry_until.reset(token)


def _hopeless(error: BaseException) -> bool:
    """Failures no retry can mend: refused credentials, a TLS handshake that cannot work."""
    return isinstance(error, AuthenticationError) or tls_failure(error) is not None


def tls_failure(error: BaseException) -> ssl.SSLError | None:
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _check_url(url: str, scheme: str, path: str, query: list[tuple[str, str]]) -> None:
    """`ValueError` for a path that is not a database number and for unknown or bad options."""
    where = redact(url)
    if scheme != "unix" and path not in ("", "/"):
        db = path[1:]
        if not db.isdigit():
            raise ValueError(
                f"Redis URL {where!r}: the path {path!r} is not a database number (use"
                " redis://host:port/0, or another number)"
            )
    known = set(URL_QUERY_ARGUMENT_PARSERS) | _STRING_OPTIONS | set(_OUR_OPTIONS)
    for name, value in query:
        if name not in known:
            raise ValueError(
                f"Redis URL {where!r}: unknown option {name!r} (known: {', '.join(sorted(known))})"
            )
        if name in _NUMBER_OPTIONS or name == "retries":
            try:
                number = float(value)
            except ValueError:
                number = math.nan
            if not number >= (0 if name == "retries" else 0.001) or math.isinf(number):
                raise ValueError(
                    f"Redis URL {where!r}: option {name}={value!r} must be a positive number"
                )
        if name == "prefix":
            check_prefix(value)
