"""redis-py's errors turned into ours, by one table (as httpx maps httpcore's errors).

`talking(store, what, key=...)` wraps every call a store makes to Redis: on entry it checks
the server's settings once per store (`check_server`); on the way out it maps the error
raised to a `StorageError` whose message names the server, what was being done, and what to
do about it. The first row of `_TABLE` whose type matches wins, so more specific types come
first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from redis.exceptions import AuthenticationError, NoPermissionError, RedisError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..errors import CorruptData, DurabilityUnavailable, StorageError, StoreUnavailable
from ._connect import tls_failure
from ._durable import check_level

if TYPE_CHECKING:
    from ._base import RedisBase

__all__ = ["answers", "check_server", "server_problems", "talking", "unavailable"]

log = logging.getLogger("agentfsm.storage")
_warned: set[tuple[str, str]] = set()
"""(server, problem) pairs this process has warned about: each is said once."""


def unavailable(where: str, what: str, exc: BaseException) -> StoreUnavailable:
    """The server cannot be reached (or did not answer), saying the likely cause."""
    tls = tls_failure(exc)
    if tls is not None:
        return StoreUnavailable(
            f"cannot {what}: the TLS handshake with Redis at {where} failed"
            f" ({tls.reason or tls}): the server may not speak TLS (then use redis://), or"
            " its certificate is not trusted (pass ?ssl_ca_certs=)"
        )
    if where.startswith("rediss") and "Timeout connecting" in str(exc):
        return StoreUnavailable(
            f"cannot {what}: Redis at {where} did not complete the TLS handshake"
            f" ({exc}): the server may not speak TLS (then use redis://), or may be"
            " overloaded"
        )
    if isinstance(exc, RedisTimeoutError) or "Timeout" in str(exc):
        return StoreUnavailable(
            f"cannot {what}: Redis at {where} accepted the connection but did not"
            f" answer in time ({exc}); is it overloaded or stopped, or is this a TLS port"
            " reached with redis://? (?socket_timeout= sets the wait)"
        )
    return StoreUnavailable(f"cannot reach Redis at {where} to {what}: {exc}")


def _not_text(where: str, what: str, key: str | None, exc: Any) -> StorageError:
    # decode_responses: bytes we did not write
    return CorruptData(key or f"{where} ({what})", f"bytes that are not UTF-8 text ({exc.reason})")


def _credentials(where: str, what: str, key: str | None, exc: Any) -> StorageError:
    return StorageError(f"Redis at {where} refused the credentials to {what}: {exc}")


def _unreachable(where: str, what: str, key: str | None, exc: Any) -> StorageError:
    return unavailable(where, what, exc)


def _refused(where: str, what: str, key: str | None, exc: Any) -> StorageError:
    return StorageError(f"Redis at {where} refused to {what}: {exc}")


_TABLE: tuple[tuple[type[BaseException], Callable[[str, str, str | None, Any], StorageError]], ...]
_TABLE = (
    (UnicodeDecodeError, _not_text),
    (AuthenticationError, _credentials),  # a ConnectionError to redis-py: before it
    (RedisConnectionError, _unreachable),
    (RedisTimeoutError, _unreachable),
    (RedisError, _refused),
)


@contextlib.asynccontextmanager
async def talking(store: RedisBase, what: str, *, key: str | None = None) -> AsyncIterator[None]:
    """Around one call to Redis (`what`: "load run 'x'"); `key` names the key read, for
    `CorruptData`. Replies inside are `Any`: with `decode_responses=True` they are str,
    which redis-py's types cannot express."""
    try:
        if not store._checked:
            await check_server(store)
        yield
    except StorageError:
        raise
    except Exception as exc:
        for kind, make in _TABLE:
            if isinstance(exc, kind):
                raise make(store._where, what, key, exc) from None
        raise


async def check_server(store: RedisBase) -> None:
    """Once per store: refuse a durability level the server cannot give (every call raises
    `DurabilityUnavailable` until it can), and warn when the server's settings can lose or
    evict runs. Reads `INFO` (ACL users may be allowed it when `CONFIG` is denied); skipped
    when refused."""
    store._checked = True
    client = store.client
    try:
        memory = _info_of(await client.info("memory"))
        persistence = _info_of(await client.info("persistence"))
        if store.durability.waits:
            server = _info_of(await client.info("server"))
            await check_level(store, {**server, **persistence})
    except NoPermissionError:
        return
    except (RedisConnectionError, RedisTimeoutError, DurabilityUnavailable):
        store._checked = False  # try again with the next call; this one fails as it
        raise
    except RedisError as exc:
        log.debug("could not read INFO from Redis at %s: %s", store._where, exc)
        return
    for problem in server_problems(memory, persistence):
        if (store._where, problem) not in _warned:
            _warned.add((store._where, problem))
            log.warning("Redis at %s: %s", store._where, problem)


def server_problems(memory: dict[str, Any], persistence: dict[str, Any]) -> list[str]:
    """What in these `INFO memory` and `INFO persistence` sections can lose runs."""
    problems = []
    policy = str(memory.get("maxmemory_policy", "noeviction"))
    if policy != "noeviction":
        problems.append(
            f"maxmemory-policy is {policy}: Redis may evict parts of runs when memory is"
            " full; set maxmemory-policy noeviction (commits then fail loudly instead)"
        )
    if str(persistence.get("aof_enabled", "1")) == "0":
        problems.append(
            "appendonly is no: a restart loses every commit since the last snapshot; set"
            " appendonly yes (appendfsync everysec loses at most about a second of commits,"
            " always loses none)"
        )
    return problems


def _info_of(reply: Any) -> dict[str, Any]:
    """An INFO reply as one section dict (a Cluster answers per node: take the first)."""
    if isinstance(reply, dict) and reply and all(isinstance(v, dict) for v in reply.values()):
        return dict(next(iter(reply.values())))
    return dict(reply) if isinstance(reply, dict) else {}


async def answers(store: RedisBase, within: float) -> None:
    """`StoreUnavailable` saying why (and only why) unless the server answers a PING within
    `within` seconds (the client's own retries would take longer)."""
    try:
        await asyncio.wait_for(store.client.ping(), within)
        if not store._checked:
            await check_server(store)  # a level the server cannot give is refused here too
    except StorageError:
        raise
    except TimeoutError:  # the client retried until now: was it refused, or is it silent?
        raise StoreUnavailable(await _why_no_answer(store._where, within)) from None
    except Exception as exc:  # unknown host, TLS, auth: say which
        first = str(exc).splitlines()[0] if str(exc) else repr(exc)
        raise StoreUnavailable(f"{type(exc).__name__}: {first}") from None


async def _why_no_answer(url: str, within: float) -> str:
    """Why a Redis URL gave no answer: nothing listens there, or the server is silent."""
    parts = urlsplit(url)
    try:
        if parts.scheme == "unix":
            connecting = asyncio.open_unix_connection(parts.path)
        else:
            connecting = asyncio.open_connection(parts.hostname or "localhost", parts.port or 6379)
        _, writer = await asyncio.wait_for(connecting, 0.5)
    except TimeoutError:
        pass
    except ConnectionRefusedError:
        return "connection refused: nothing listens there"
    except OSError as exc:
        return f"cannot connect: {exc.strerror or exc}"
    else:
        writer.close()
    return f"no answer within {within:g} s"
