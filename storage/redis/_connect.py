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
from dataclasses import dataclass
from typing import Any, TypeAlias
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.connection import URL_QUERY_ARGUMENT_PARSERS
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import AuthenticationError, ReadOnlyError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .._durability import PRIMARY, Durability
from ..url import redact
from ._connection import send_in_task

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_RETRY_FOR",
    "DEFAULT_SOCKET_TIMEOUT",
    "FAILOVER_REPLIES",
    "PREFIX_ALPHABET",
    "Client",
    "Connector",
    "check_prefix",
    "close_with_loop",
    "connector",
    "failing_over",
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
_OUR_OPTIONS = ("prefix", "retries", "retry_for", "durability", "durability_timeout")
_STRING_OPTIONS = frozenset(
    {"client_name", "username", "password", "ssl_keyfile", "ssl_certfile", "ssl_cert_reqs",
     "ssl_ca_certs", "ssl_ca_data", "ssl_ca_path", "ssl_ciphers", "ssl_password", "path"}
)  # fmt: skip
_NUMBER_OPTIONS = (
    "socket_timeout", "socket_connect_timeout", "max_connections", "retry_for",
    "durability_timeout",
)  # fmt: skip
FAILOVER_REPLIES = (
    "READONLY", "NOREPLICAS", "UNBLOCKED", "MASTERDOWN", "LOADING", "TRYAGAIN", "CLUSTERDOWN",
)  # fmt: skip
"""Error replies a server gives while a failover is under way (a demoted primary, a replica
not yet promoted, too few replicas for `min-replicas-to-write`, a Cluster whose slots are
not all served until a replica takes over): retried within the
`retry_for` budget, over a new connection (behind Sentinel: to the primary it names now).
A Cluster's MOVED/ASK are followed by redis-py's cluster client itself."""

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


@dataclass(frozen=True, slots=True)
class Connector:
    """What a Redis URL says: how to connect, the key prefix, the URL without its password
    (for messages), and the durability level of commits."""

    connect: Callable[[], Client]
    prefix: str
    where: str
    durability: Durability


def connector(url: str, prefix: str, retries: int, durability: str | None = None) -> Connector:
    """How to connect to `url` (see `RedisStore.from_url`): a `?prefix=` wins over `prefix`;
    `durability` (a level's name) and `?durability=` must agree when both are given."""
    parts = urlsplit(url)
    scheme, _, mode = parts.scheme.partition("+")
    if mode not in ("", "cluster", "sentinel"):
        raise ValueError(f"unknown Redis URL scheme {parts.scheme!r} in {redact(url)!r}")
    query = parse_qsl(parts.query, keep_blank_values=True)
    _check_url(url, scheme, "" if mode == "sentinel" else parts.path, query)
    if mode == "sentinel" and not _sentinel_path(parts.path):
        raise ValueError(
            f"Redis URL {redact(url)!r}: name the service the Sentinels watch, and optionally"
            " a database number: redis+sentinel://HOST:PORT[,HOST:PORT]/SERVICE[/DB]"
        )
    ours = dict((k, v) for k, v in query if k in _OUR_OPTIONS)
    prefix = ours.get("prefix", prefix)
    retries = int(ours["retries"]) if "retries" in ours else retries
    retry_for = float(ours.get("retry_for", DEFAULT_RETRY_FOR))
    level = _durability(url, ours, durability)
    socket_timeout = float(dict(query).get("socket_timeout", DEFAULT_SOCKET_TIMEOUT))
    if level.waits and level.timeout >= socket_timeout:
        raise ValueError(
            f"Redis URL {redact(url)!r}: durability_timeout={level.timeout:g} must be below"
            f" socket_timeout={socket_timeout:g} (a command's wait for its reply)"
        )
    theirs = [(k, v) for k, v in query if k not in _OUR_OPTIONS]
    plain = urlunsplit(parts._replace(scheme=scheme, query=urlencode(theirs)))
    check_prefix(prefix)

    def options() -> dict[str, Any]:
        retry = _Retry(ExponentialWithJitterBackoff(base=0.05, cap=1.0), retries, retry_for)
        return {
            "decode_responses": True,
            "retry": retry,
            "retry_on_error": [RedisConnectionError, RedisTimeoutError],
            "socket_connect_timeout": DEFAULT_CONNECT_TIMEOUT,
            "socket_timeout": DEFAULT_SOCKET_TIMEOUT,
        }

    def connect() -> Client:
        if mode == "cluster":
            return aioredis.RedisCluster.from_url(plain, **options())
        if mode == "sentinel":
            return _behind_sentinel(url, scheme, theirs, options())
        pool = aioredis.BlockingConnectionPool.from_url(plain, **options())
        send_in_task(pool)
        if "max_connections" not in dict(query):
            pool.max_connections = DEFAULT_MAX_CONNECTIONS
        return aioredis.Redis.from_pool(pool)  # closing the client closes the pool

    return Connector(connect, prefix, redact(url), level)


def _durability(url: str, ours: dict[str, str], given: str | None) -> Durability:
    named = ours.get("durability")
    if named is not None and given is not None and named != given:
        raise ValueError(
            f"Redis URL {redact(url)!r} says durability={named!r} but {given!r} was passed:"
            " give it once"
        )
    text = named or given
    timeout = ours.get("durability_timeout")
    if text is None:
        return PRIMARY if timeout is None else Durability.parse("primary", timeout)
    try:
        return Durability.parse(text, timeout)
    except ValueError as exc:
        raise ValueError(f"Redis URL {redact(url)!r}: {exc}") from None


def _sentinel_path(path: str) -> bool:
    service, _, db = path.strip("/").partition("/")
    return bool(re.fullmatch(r"[A-Za-z0-9_.-]+", service)) and (db == "" or db.isdigit())


def _behind_sentinel(
    url: str, scheme: str, query: list[tuple[str, str]], options: dict[str, Any]
) -> aioredis.Redis:
    """A client of the primary the Sentinels at `url` name for its service: each new
    connection asks them, so after a failover the next connection goes to the new one."""
    parts = urlsplit(url)
    hosts = []
    for node in parts.netloc.rsplit("@", 1)[-1].split(","):
        host, _, port = node.rpartition(":")
        hosts.append((host.strip("[]") or "localhost", int(port or 26379)))
    service, _, db = parts.path.strip("/").partition("/")
    for name, value in query:
        parse = URL_QUERY_ARGUMENT_PARSERS.get(name)
        options[name] = parse(value) if parse is not None else value
    if scheme == "rediss":
        options["ssl"] = True
    if parts.username:
        options["username"] = parts.username
    if parts.password:
        options["password"] = parts.password
    timeouts = {k: options[k] for k in ("socket_timeout", "socket_connect_timeout")}
    sentinel = Sentinel(hosts, sentinel_kwargs={**timeouts, "decode_responses": True})
    client: _BehindSentinel = sentinel.master_for(
        service, redis_class=_BehindSentinel, db=int(db or 0), **options
    )
    client.watched_by = sentinel
    send_in_task(client.connection_pool)
    return client


class _BehindSentinel(aioredis.Redis):
    """A client of the primary a `Sentinel` names, closing the Sentinel's clients with it."""

    watched_by: Sentinel | None = None

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        if self.watched_by is not None:
            for asked in self.watched_by.sentinels:
                await asked.aclose()


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
                except (RedisConnectionError, RedisTimeoutError, ResponseError) as error:
                    if isinstance(error, ResponseError) and not failing_over(error):
                        raise
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


def failing_over(error: BaseException) -> bool:
    """Whether `error` is a reply a server gives during a failover (`FAILOVER_REPLIES`)."""
    if isinstance(error, ReadOnlyError):
        return True
    text = str(error)
    text = text.rsplit("caused error: ", 1)[-1]  # a pipeline's reply names its command first
    return text.split(" ", 1)[0] in FAILOVER_REPLIES


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
