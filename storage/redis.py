"""`RedisStore`: runs in Redis, each commit one `EVALSHA` of `commit.lua`.

Key layout (one hash tag per run, so every per-run script touches one Cluster slot):

    {prefix}:{run_id}:run      hash    agent, version, state, seq, status, created_at,
                                       updated_at, fence, holder, crashes, m:<field> (JSON)
    {prefix}:{run_id}:events   stream  one entry per commit, id "<seq>-0" ("0-1" for creation)
    {prefix}:{run_id}:keys     hash    idempotency key -> seq
    {prefix}:{run_id}:lease    string  holder, with a TTL
    {prefix}:runs              zset    run id by creation time
    {prefix}:agent:<agent>     zset    the agent's run ids by creation time
    {prefix}:status:<status>   zset    run ids in that status, by when they entered it
    {prefix}:deadlines         zset    waiting run id by its deadline (see `due`)

On standalone Redis the scripts keep the indexes too: `create.lua` and `commit.lua` get their
keys, so a start and every commit are one round trip. On Cluster the indexes are in other
slots: they are written beside each create and each commit that changes the status (or the
deadline), and a crash in between can leave them behind or ahead. Readers check every entry
against its run, `gc` drops entries of runs that are gone, and `reindex` rebuilds them all
from the runs.
A run that ends with retention (`Event.expires_at`) gets its keys expired by Redis then.

Tenants stay apart: a prefix is 1-64 letters, digits, `_`, `.`, `-` (`PREFIX_ALPHABET`),
so it never holds the `:` that ends it, nor a glob character. Every key of prefix P starts
with `P:` and no key of another prefix can: no pattern one tenant scans (`P:agent:*`,
`P:{*}:run`) can match another tenant's keys, and each key a scan finds is parsed again
before it is used. Prefixes an older agentfsm accepted (with `:`, say) are refused with
the command that moves their keys (`python -m storage.rekey`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import re
import ssl
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, replace
from importlib.resources import files
from typing import Any, TypeAlias, get_args
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis.asyncio as aioredis
from pydantic import JsonValue
from redis.asyncio.connection import URL_QUERY_ARGUMENT_PARSERS
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import AuthenticationError, NoPermissionError, RedisError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from . import _live_redis as _live
from ._charge import ScopeCharge
from ._codec import dump_event, dump_json, load_event, load_json, run_from_fields
from ._connection import HeldConnections, send_in_task
from ._ledger import scope_keys
from ._paging import TOP, RunCursor, redis_page
from ._process import provably_dead
from ._usage import FIELD, lua_increments
from .base import (
    LIVE_MAXLEN,
    LIVE_TTL,
    CommitOutcome,
    Committed,
    Conflict,
    Duplicate,
    Event,
    Lease,
    LeaseHeld,
    LeaseLost,
    LiveEntry,
    RunRecord,
    RunStatus,
    check_history,
    check_run_id,
    creation_event,
)
from .errors import CorruptData, StorageError, StoreUnavailable

__all__ = ["PREFIX_ALPHABET", "Client", "RedisStore", "check_prefix"]

log = logging.getLogger("agentfsm.storage")

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
_warned: set[tuple[str, str]] = set()
"""(server, problem) pairs this process has warned about: each is said once."""
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


def _script(name: str) -> str:
    return files(__package__).joinpath(name).read_text(encoding="utf-8")


def redact(url: str) -> str:
    """`url` with any password replaced by ***, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit(parts._replace(netloc=user + netloc))


class RedisStore:
    """A `storage.Store` on Redis: standalone (or behind Sentinel) or Cluster.

    Args:
        client: a `redis.asyncio.Redis` or `redis.asyncio.RedisCluster` created with
            `decode_responses=True`.
        prefix: the namespace of every key; one per application or tenant.
        where: how to name the server in error messages (a URL without its password).
    """

    live_maxlen = LIVE_MAXLEN
    live_ttl = LIVE_TTL

    def __init__(
        self,
        client: Client,
        *,
        prefix: str = "agentfsm",
        where: str = "redis",
    ) -> None:
        self._prefix = check_prefix(prefix)
        self._where = where
        self._reconnect: Callable[[], Client] | None = None
        """How to make a new client (for a new event loop): known for stores from a URL."""
        self._bound = _Bound.of(client)
        self._checked = False
        self._indexes: list[str] = []
        """The index keys a commit keeps in its own script (deadlines, then runs by each
        status): on standalone Redis; on Cluster they are in other slots (none here)."""
        if not isinstance(client, aioredis.RedisCluster):
            self._indexes = [self._deadlines, *map(self._by_status, get_args(RunStatus))]

    def _on_this_loop(self) -> _Bound:
        """The client and scripts for the running event loop: a redis.asyncio client is bound
        to the loop it first connected on, so a store used from a new loop (a second
        `asyncio.run`, a notebook) gets a new client there, when it knows how to make one."""
        bound = self._bound
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return bound
        if bound.loop is not loop and bound.loop is not None and self._reconnect is not None:
            self._bound = bound = _Bound.of(self._reconnect())
        if bound.loop is None:
            bound.loop = loop
            if self._reconnect is not None:  # our own client: it closes with its loop
                bound.closer = _close_with_loop(bound.client)
        return bound

    @property
    def _client(self) -> Client:
        return self._on_this_loop().client

    @property
    def _commit(self) -> AsyncScript:
        return self._on_this_loop().commit

    @property
    def _create(self) -> AsyncScript:
        return self._on_this_loop().create

    @property
    def _lease(self) -> AsyncScript:
        return self._on_this_loop().lease

    @property
    def _restore(self) -> AsyncScript:
        return self._on_this_loop().restore

    @classmethod
    def from_url(cls, url: str, *, prefix: str = "agentfsm", retries: int = 8) -> RedisStore:
        """Connect lazily to `url`, retrying connection errors and timeouts with jittered
        exponential backoff, for about 5 s in all (`?retry_for=`) or `retries` tries.

        `redis://host:port/db`, `rediss://` (TLS), `unix:///path.sock`; a Redis Cluster with
        `redis+cluster://host:port` or `rediss+cluster://` (any node: the others are found
        from it). A `?prefix=NAME` query sets the key prefix (it wins over `prefix`).
        A command waits `?socket_timeout=` seconds for its reply (default 3), a connection
        attempt `?socket_connect_timeout=` (default 2): a server that accepts connections
        but never answers fails a call with `StoreUnavailable` in about 6 s.

        Connections come from a pool of at most `?max_connections=` (default 500); when all
        are busy, a command waits for one (up to 20 s) instead of failing, so a process may
        drive far more runs at once than it has connections.

        Raises `ValueError` for a URL whose path is not a database number or whose options
        are unknown or not numbers where numbers belong.
        """
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
        where = redact(url)
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

        store = cls(connect(), prefix=prefix, where=where)
        store._reconnect = connect
        return store

    @property
    def client(self) -> Client:
        return self._client

    @property
    def prefix(self) -> str:
        return self._prefix

    def key(self, run_id: str, part: str) -> str:
        """The Redis key of one part ("run", "events", "keys", "lease") of a run."""
        return f"{self._prefix}:{{{run_id}}}:{part}"

    def commit_keys(self, run_id: str) -> list[str]:
        """The keys `commit` sends `commit.lua` (benchmarks send the same)."""
        return [*self._keys(run_id, "run", "events", "keys", "lease"), *self._indexes]

    def _keys(self, run_id: str, *parts: str) -> list[str]:
        return [self.key(run_id, p) for p in parts]

    @property
    def _deadlines(self) -> str:
        """The sorted set of waiting runs with a deadline, scored by it."""
        return f"{self._prefix}:deadlines"

    async def _call(
        self, what: str, op: Callable[[], Awaitable[Any]], *, key: str | None = None
    ) -> Any:
        """Await `op`, turning redis-py's errors into ours. Replies are `Any`: with
        `decode_responses=True` they are str, which redis-py's types cannot express."""
        try:
            if not self._checked:
                await self._check_server()
            return await op()
        except UnicodeDecodeError as exc:  # decode_responses: bytes we did not write
            raise CorruptData(
                key or f"{self._where} ({what})", f"bytes that are not UTF-8 text ({exc.reason})"
            ) from None
        except AuthenticationError as exc:
            raise StorageError(
                f"Redis at {self._where} refused the credentials to {what}: {exc}"
            ) from None
        except (RedisConnectionError, RedisTimeoutError) as exc:
            raise self._unavailable(what, exc) from None
        except RedisError as exc:
            raise StorageError(f"Redis at {self._where} refused to {what}: {exc}") from None

    def _unavailable(self, what: str, exc: RedisError) -> StoreUnavailable:
        tls = _tls_failure(exc)
        if tls is not None:
            return StoreUnavailable(
                f"cannot {what}: the TLS handshake with Redis at {self._where} failed"
                f" ({tls.reason or tls}): the server may not speak TLS (then use redis://), or"
                " its certificate is not trusted (pass ?ssl_ca_certs=)"
            )
        if self._where.startswith("rediss") and "Timeout connecting" in str(exc):
            return StoreUnavailable(
                f"cannot {what}: Redis at {self._where} did not complete the TLS handshake"
                f" ({exc}): the server may not speak TLS (then use redis://), or may be"
                " overloaded"
            )
        if isinstance(exc, RedisTimeoutError) or "Timeout" in str(exc):
            return StoreUnavailable(
                f"cannot {what}: Redis at {self._where} accepted the connection but did not"
                f" answer in time ({exc}); is it overloaded or stopped, or is this a TLS port"
                " reached with redis://? (?socket_timeout= sets the wait)"
            )
        return StoreUnavailable(f"cannot reach Redis at {self._where} to {what}: {exc}")

    async def _check_server(self) -> None:
        """Once per store: warn when the server's settings can lose or evict runs. Reads
        `INFO` (ACL users may be allowed it when `CONFIG` is denied); skipped when refused."""
        self._checked = True
        try:
            memory = _info_of(await self._client.info("memory"))
            persistence = _info_of(await self._client.info("persistence"))
        except NoPermissionError:
            return
        except (RedisConnectionError, RedisTimeoutError):
            self._checked = False  # try again with the next call; this one fails as it
            raise
        except RedisError as exc:
            log.debug("could not read INFO from Redis at %s: %s", self._where, exc)
            return
        for problem in server_problems(memory, persistence):
            if (self._where, problem) not in _warned:
                _warned.add((self._where, problem))
                log.warning("Redis at %s: %s", self._where, problem)

    async def create(self, run: RunRecord, *, origin: JsonValue = None) -> RunRecord:
        stored, _ = await self._create_and_lease(run, origin, "", 0)
        return stored

    async def start(
        self, run: RunRecord, *, owner: str, ttl: float, origin: JsonValue = None
    ) -> tuple[RunRecord, Lease | LeaseHeld]:
        stored, lease = await self._create_and_lease(run, origin, owner, ttl)
        assert lease is not None
        return stored, lease

    async def _create_and_lease(
        self, run: RunRecord, origin: JsonValue, owner: str, ttl: float
    ) -> tuple[RunRecord, Lease | LeaseHeld | None]:
        """One `create.lua` (two when a provably dead holder's lease is taken over)."""
        check_run_id(run.run_id)
        event = creation_event(run, origin)
        fields = _run_fields(replace(run, seq=0, holder="", crashes=0, usage={}))
        keys = self._keys(run.run_id, "run", "events", "keys", "lease")
        if self._indexes:
            keys += [f"{self._prefix}:runs", self._by_agent(run.agent)]
            keys += [self._by_status(run.status), self._deadlines]
        elif run.deadline is not None:
            await self._index_deadline(run.run_id, run.deadline)
        head = [dump_event(event), event.key, _deadline_arg(run.deadline), owner, _ms(ttl)]
        tail = [repr(run.created_at), repr(run.updated_at), *fields]
        dead = ""
        while True:
            args = [*head, dead, *tail]
            bound = self._on_this_loop()
            created, got, raw = await self._call(
                f"create run {run.run_id!r}", functools.partial(bound.run, bound.create, keys, args)
            )
            lease = self._lease_of(run.run_id, owner, ttl, got) if owner else None
            if not isinstance(lease, LeaseHeld) or lease.owner == dead:
                break
            if not provably_dead(lease.owner):
                break
            dead = lease.owner  # take it over, unless it changed hands meanwhile
        if not self._indexes:
            # Index it even when it existed: the reply to an earlier try may have been lost
            # after the script ran. (Outside the script: the indexes are in other slots.)
            await self._index_run(run)
        if created:
            return (replace(run, holder=owner) if isinstance(lease, Lease) else run), lease
        stored = dict(zip(raw[::2], raw[1::2], strict=True))
        return self._decode_run(run.run_id, stored, self.key(run.run_id, "run")), lease

    @staticmethod
    def _lease_of(run_id: str, owner: str, ttl: float, reply: list[Any]) -> Lease | LeaseHeld:
        """A lease.lua (or create.lua) acquire reply as a `Lease` or `LeaseHeld`."""
        token = int(reply[0])
        if token < 0:
            return LeaseHeld(
                run_id=run_id, owner=str(reply[1]), expires_in=max(int(reply[2]), 0) / 1000
            )
        seq = int(reply[2]) if len(reply) > 2 else None
        return Lease(
            run_id=run_id, owner=owner, token=token, ttl=ttl, crashes=int(reply[1]), seq=seq
        )

    async def restore(self, run: RunRecord, events: Sequence[Event]) -> bool:
        check_history(run, events)
        fields = _run_fields(run)
        args: list[Any] = [len(fields) // 2, *fields]
        for e in events:
            args += ["0-1" if e.seq == 0 else f"{e.seq}-0", dump_event(e), e.key, e.seq]
        keys = self._keys(run.run_id, "run", "events", "keys")
        if run.deadline is not None:
            await self._index_deadline(run.run_id, run.deadline)
        written = await self._call(
            f"restore run {run.run_id!r}", lambda: self._restore(keys=keys, args=args)
        )
        if written and run.expires_at is not None:
            expires_at = run.expires_at

            async def expire() -> None:
                pipe = self._client.pipeline(transaction=False)
                self._expire(pipe, run.run_id, expires_at)
                await pipe.execute()

            await self._call(f"restore the retention of run {run.run_id!r}", expire)
        await self._index_run(run)
        return bool(written)

    async def _index_run(self, run: RunRecord) -> None:
        async def index() -> None:
            pipe = self._client.pipeline(transaction=False)
            pipe.zadd(f"{self._prefix}:runs", {run.run_id: run.created_at}, nx=True)
            pipe.zadd(self._by_agent(run.agent), {run.run_id: run.created_at}, nx=True)
            pipe.zadd(self._by_status(run.status), {run.run_id: run.updated_at}, nx=True)
            await pipe.execute()

        await self._call("index the run", index)

    def _by_agent(self, agent: str) -> str:
        return f"{self._prefix}:agent:{agent}"

    def _by_status(self, status: str) -> str:
        return f"{self._prefix}:status:{status}"

    async def load(self, run_id: str) -> RunRecord | None:
        key = self.key(run_id, "run")
        raw: dict[str, str] = await self._call(
            f"load run {run_id!r}", lambda: self._client.hgetall(key), key=key
        )
        if not raw:
            return None
        return self._decode_run(run_id, raw, key)

    def _decode_run(self, run_id: str, raw: dict[str, str], key: str) -> RunRecord:
        memory: dict[str, JsonValue] = {
            name[2:]: load_json(value, f"{key} memory field {name[2:]!r}")
            for name, value in raw.items()
            if name.startswith("m:")
        }
        return run_from_fields(run_id, raw, memory, key)

    @property
    def standalone(self) -> bool:
        """Whether the server is a standalone Redis (one slot space): not a Cluster."""
        return bool(self._indexes)

    async def commit(
        self,
        run_id: str,
        *,
        expected_seq: int,
        token: int,
        event: Event,
        scope_charge: ScopeCharge | None = None,
    ) -> CommitOutcome:
        if event.seq != expected_seq + 1:
            raise ValueError(f"event seq {event.seq} does not follow expected seq {expected_seq}")
        if scope_charge is not None and not self.standalone:
            raise ValueError("a scope charge cannot be part of a commit on Redis Cluster")
        args: list[Any] = [
            expected_seq,
            token,
            event.key,
            event.dest,
            event.status,
            repr(event.ended_at or time.time()),
            _deadline_arg(event.deadline),
            "" if event.version is None else event.version,
            "\n".join(event.dropped),
            dump_event(event),
            "" if event.expires_at is None else repr(event.expires_at),
            lua_increments(event),
            "" if scope_charge is None else max(int(scope_charge.expires_at * 1000), 0),
        ]
        for name, value in event.patch.items():
            args += [name, dump_json(value, f"memory field {name!r}")]
        keys = self.commit_keys(run_id)
        if scope_charge is not None:
            keys += scope_keys(self._prefix, scope_charge.scope, scope_charge.period)
        if event.deadline is not None and not self._indexes:
            # Indexed first: an entry without a commit is harmless.
            await self._index_deadline(run_id, event.deadline)
        bound = self._on_this_loop()
        verdict, seq, *previous = await self._call(
            f"commit to run {run_id!r}", lambda: bound.run(bound.commit, keys, args)
        )
        match verdict:
            case "ok" if self._indexes:  # the script kept them
                return Committed(seq=int(seq))
            case "ok":
                if event.deadline is None and previous and previous[0]:
                    # Left a waiting state with a deadline. Should this process die before
                    # the ZREM, `due` drops the stale entry when it meets it.
                    await self._unindex_deadline(run_id)
                before = previous[1] if len(previous) > 1 else event.status
                if before != event.status:
                    await self._after_status_change(run_id, before, event)
                return Committed(seq=int(seq))
            case "duplicate":
                return Duplicate(seq=int(seq))
            case "conflict":
                return Conflict(current_seq=int(seq))
            case "lease_lost":
                return LeaseLost()
            case _:
                raise KeyError(run_id)

    async def history(
        self, run_id: str, from_seq: int = 0, to_seq: int | None = None
    ) -> list[Event]:
        key = self.key(run_id, "events")
        start = "-" if from_seq <= 0 else f"{from_seq}-0"
        end = "+" if to_seq is None else str(to_seq)  # "N" is every id of N (0-1 too)
        if to_seq is not None and to_seq < max(from_seq, 0):
            return []
        entries = await self._call(
            f"read the history of {run_id!r}", lambda: self._client.xrange(key, start, end), key=key
        )
        events = []
        for entry_id, fields in entries:
            where = f"{key} entry {entry_id}"
            if "e" not in fields:
                raise CorruptData(where, "no event field")
            events.append(load_event(fields["e"], where))
        return events

    async def publish(self, run_id: str, entries: Sequence[tuple[int, JsonValue]]) -> None:
        key = self.key(run_id, "live")
        await self._call(
            f"publish live items of {run_id!r}",
            lambda: _live.publish(self._client, key, entries, self.live_maxlen, self.live_ttl),
        )

    async def live(
        self, run_id: str, after: str | None = None, *, wait: float = 0.0, limit: int = 1000
    ) -> list[LiveEntry]:
        key = self.key(run_id, "live")
        return await self._call(  # type: ignore[no-any-return]
            f"read live items of {run_id!r}",
            lambda: _live.read(self._client, key, after, wait, limit),
            key=key,
        )

    async def acquire_lease(self, run_id: str, owner: str, ttl: float) -> Lease | LeaseHeld:
        keys = self._keys(run_id, "run", "lease")
        dead = ""
        while True:
            args: list[Any] = ["acquire", owner, _ms(ttl), 0, dead]
            reply = await self._call(
                f"lease run {run_id!r}", functools.partial(self._lease, keys=keys, args=args)
            )
            if int(reply[0]) == 0:
                raise KeyError(run_id)
            got = self._lease_of(run_id, owner, ttl, reply)
            if isinstance(got, Lease) or got.owner == dead or not provably_dead(got.owner):
                return got
            dead = got.owner  # take it over, unless it changed hands meanwhile

    async def renew_lease(self, lease: Lease) -> bool:
        keys = self._keys(lease.run_id, "run", "lease")
        ok = await self._call(
            f"renew the lease on {lease.run_id!r}",
            lambda: self._lease(
                keys=keys, args=["renew", lease.owner, _ms(lease.ttl), lease.token]
            ),
        )
        return bool(ok)

    async def release_lease(self, lease: Lease) -> None:
        keys = self._keys(lease.run_id, "run", "lease")
        await self._call(
            f"release the lease on {lease.run_id!r}",
            lambda: self._lease(keys=keys, args=["release", lease.owner, 0, lease.token]),
        )

    async def list_runs(
        self,
        *,
        agent: str | None = None,
        status: RunStatus | None = None,
        state: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = 100,
        before: RunCursor | None = None,
        id_contains: str | None = None,
    ) -> list[RunRecord]:
        if before is not None or id_contains is not None:
            before = before or TOP
            return await redis_page(
                self, agent=agent, status=status, until=until, before=before, limit=limit,
                matches=lambda run: _matches(run, agent, status, state, since, until),
                load=self._load_listed, id_contains=id_contains,
            )  # fmt: skip
        # Read the narrowest index, newest first, a page at a time; check each run itself.
        if status is not None:
            index = self._by_status(status)
        elif agent is not None:
            index = self._by_agent(agent)
        else:
            index = f"{self._prefix}:runs"
        page = max(min(limit, 10_000) * 2, 100)
        runs: list[RunRecord] = []
        start = 0
        while len(runs) < limit:
            ids: list[str] = await self._call(
                "list runs",
                lambda s=start: self._client.zrange(index, s, s + page - 1, desc=True),  # type: ignore[misc]
            )
            if not ids:
                break
            start += page

            async def load_all(ids: list[str] = ids) -> list[dict[str, str]]:
                pipe = self._client.pipeline(transaction=False)
                for run_id in ids:
                    pipe.hgetall(self.key(run_id, "run"))
                return await pipe.execute()

            try:
                raws = await self._call("list runs", load_all)
            except CorruptData:  # one run's bytes are bad: list the others, and say which
                raws = [await self._raw_or_none(run_id) for run_id in ids]
            for run_id, raw in zip(ids, raws, strict=True):
                if not raw:
                    continue  # gone (expired: `gc` drops its index entries), or corrupt
                run = self._decode_run(run_id, raw, self.key(run_id, "run"))
                if _matches(run, agent, status, state, since, until):
                    runs.append(run)
        runs.sort(key=lambda r: r.updated_at, reverse=True)
        return runs[: max(limit, 0)]

    async def _load_listed(self, ids: Sequence[str]) -> list[RunRecord | None]:
        """The runs of listed ids in one pipeline (None for one gone or corrupt)."""

        async def load_all() -> list[dict[str, str]]:
            pipe = self._client.pipeline(transaction=False)
            for run_id in ids:
                pipe.hgetall(self.key(run_id, "run"))
            return await pipe.execute()

        try:
            raws: list[dict[str, str] | None] = await self._call("list runs", load_all)
        except CorruptData:  # one run's bytes are bad: list the others
            raws = [await self._raw_or_none(run_id) for run_id in ids]
        return [
            self._decode_run(run_id, raw, self.key(run_id, "run")) if raw else None
            for run_id, raw in zip(ids, raws, strict=True)
        ]

    async def _raw_or_none(self, run_id: str) -> dict[str, str] | None:
        key = self.key(run_id, "run")
        try:
            raw: dict[str, str] = await self._call(
                f"load run {run_id!r}", lambda: self._client.hgetall(key), key=key
            )
        except CorruptData as exc:
            log.warning("left out of the listing: %s", exc)
            return None
        return raw

    async def gc(self, now: float) -> int:
        """Redis expires finished runs itself: this drops index entries of runs gone."""
        removed = 0
        for index in await self._index_keys():
            ids: list[str] = await self._call(
                "clean the indexes",
                lambda i=index: self._client.zrange(i, 0, -1),  # type: ignore[misc]
            )
            for start in range(0, len(ids), 1000):
                chunk = ids[start : start + 1000]

                async def gone(chunk: list[str] = chunk) -> list[str]:
                    pipe = self._client.pipeline(transaction=False)
                    for run_id in chunk:
                        pipe.exists(self.key(run_id, "run"))
                    return [r for r, n in zip(chunk, await pipe.execute(), strict=True) if not n]

                missing = await self._call("clean the indexes", gone)
                if missing:
                    await self._call(
                        "clean the indexes",
                        lambda i=index, m=missing: self._client.zrem(i, *m),  # type: ignore[misc]
                    )
                    removed += len(missing)
        return removed

    async def reindex(self) -> int:
        runs = 0
        for index in await self._index_keys():
            if index != self._deadlines:
                await self._call("reindex", lambda i=index: self._client.delete(i))  # type: ignore[misc]
        run_key = re.compile(re.escape(self._prefix) + r":\{([^{}]+)\}:run")
        async for key in self._scan(f"{_glob(self._prefix)}:{{*}}:run"):
            found = run_key.fullmatch(key)
            if found is None:  # `*` matched across braces: not a run's hash
                continue
            run_id = found.group(1)
            kind = await self._call("reindex", lambda k=key: self._client.type(k))  # type: ignore[misc]
            if kind != "hash":
                continue
            raw = await self._call("reindex", lambda k=key: self._client.hgetall(k))  # type: ignore[misc]
            if not raw:
                continue
            run = self._decode_run(run_id, raw, key)
            await self._index_run(run)
            if run.deadline is not None:
                await self._index_deadline(run_id, run.deadline)
            runs += 1
        return runs

    async def _index_keys(self) -> list[str]:
        """This prefix's index keys: sorted sets named as `_by_agent` and `_by_status` name
        them (the prefix has no `:`, so no other prefix's keys start with `{prefix}:`)."""
        keys = [f"{self._prefix}:runs", self._deadlines]
        for kind in ("agent", "status"):
            found = [k async for k in self._scan(f"{_glob(self._prefix)}:{kind}:*")]
            for key in found:
                name = key[len(f"{self._prefix}:{kind}:") :]
                if "{" in name or "}" in name:
                    continue
                kind = await self._call("reindex", lambda k=key: self._client.type(k))  # type: ignore[misc]
                if kind == "zset":
                    keys.append(key)
        return keys

    async def _scan(self, pattern: str) -> AsyncIterator[str]:
        if not self._checked:
            await self._call("scan keys", _nothing)
        try:
            async for key in self._client.scan_iter(match=pattern, count=1000):
                yield key
        except (RedisConnectionError, RedisTimeoutError) as exc:
            raise self._unavailable("scan keys", exc) from None
        except RedisError as exc:
            raise StorageError(f"Redis at {self._where} refused to scan keys: {exc}") from None

    async def _after_status_change(self, run_id: str, before: str, event: Event) -> None:
        """Move the run between status indexes (its retention expiry was set by the commit)."""

        async def update() -> None:
            pipe = self._client.pipeline(transaction=False)
            pipe.zrem(self._by_status(before), run_id)
            pipe.zadd(self._by_status(event.status), {run_id: event.ended_at or time.time()})
            await pipe.execute()

        await self._call(f"index run {run_id!r}", update)

    def _expire(self, pipe: Any, run_id: str, expires_at: float) -> None:
        for part in ("run", "events", "keys"):
            pipe.pexpireat(self.key(run_id, part), max(int(expires_at * 1000), 1))

    async def _index_deadline(self, run_id: str, deadline: float) -> None:
        await self._call(
            "index the deadline", lambda: self._client.zadd(self._deadlines, {run_id: deadline})
        )

    async def _unindex_deadline(self, run_id: str) -> None:
        await self._call("unindex a deadline", lambda: self._client.zrem(self._deadlines, run_id))

    async def due(self, now: float, *, limit: int = 100) -> list[str]:
        """The index is kept beside the commits, not inside them (Cluster slots), so it may
        hold entries a crash left behind: each is checked against its run and dropped, or
        rescored, when the run says otherwise."""
        ids: list[str] = await self._call(
            "list due runs",
            lambda: self._client.zrangebyscore(self._deadlines, "-inf", now, start=0, num=limit),
        )
        if not ids:
            return []

        async def stored() -> list[str | None]:
            pipe = self._client.pipeline(transaction=False)
            for run_id in ids:
                pipe.hget(self.key(run_id, "run"), "deadline")
            return await pipe.execute()

        due: list[str] = []
        for run_id, deadline in zip(ids, await self._call("list due runs", stored), strict=True):
            if deadline and float(deadline) <= now:
                due.append(run_id)
            elif deadline:
                await self._index_deadline(run_id, float(deadline))
            else:
                await self._unindex_deadline(run_id)
        return due

    async def close(self) -> None:
        await self._client.aclose()


@dataclass(slots=True)
class _Bound:
    """A client, its scripts, and the event loop it is used on (None until first used)."""

    client: Client
    commit: AsyncScript
    create: AsyncScript
    lease: AsyncScript
    restore: AsyncScript
    loop: asyncio.AbstractEventLoop | None = None
    closer: AsyncGenerator[None, None] | None = None
    held: HeldConnections | None = None
    """Connections kept for the hot path's scripts (standalone Redis; None on Cluster)."""

    @classmethod
    def of(cls, client: Client) -> _Bound:
        def script(name: str) -> AsyncScript:
            return client.register_script(_script(f"{name}.lua"))

        bound = cls(client, script("commit"), script("create"), script("lease"), script("restore"))
        if not isinstance(client, aioredis.RedisCluster):
            bound.held = HeldConnections(client.connection_pool)
        return bound

    def run(self, script: AsyncScript, keys: list[str], args: list[Any]) -> Awaitable[Any]:
        """`script(keys, args)`, on a held connection where there are some."""
        ordinary = functools.partial(script, keys=keys, args=args)
        if self.held is None:
            return ordinary()
        return self.held.evalsha(script, keys, args, ordinary)


def _close_with_loop(client: Client) -> AsyncGenerator[None, None]:
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
    return isinstance(error, AuthenticationError) or _tls_failure(error) is not None


def _tls_failure(error: BaseException) -> ssl.SSLError | None:
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


def _matches(
    run: RunRecord,
    agent: str | None,
    status: str | None,
    state: str | None,
    since: float | None,
    until: float | None,
) -> bool:
    return (
        (agent is None or run.agent == agent)
        and (status is None or run.status == status)
        and (state is None or run.state == state)
        and (since is None or run.updated_at >= since)
        and (until is None or run.updated_at < until)
    )


def _run_fields(run: RunRecord) -> list[Any]:
    """The run hash's fields and values, flat, as `create.lua` and `restore.lua` take them."""
    fields: list[Any] = [
        "agent", run.agent, "version", run.version, "state", run.state, "seq", run.seq,
        "status", run.status, "created_at", repr(run.created_at),
        "updated_at", repr(run.updated_at), "fence", 0, "holder", run.holder,
        "crashes", run.crashes, "nonce", run.nonce,
    ]  # fmt: skip
    if run.deadline is not None:
        fields += ["deadline", repr(run.deadline)]
    if run.expires_at is not None:
        fields += ["expires_at", repr(run.expires_at)]
    if run.trace:
        fields += ["trace", run.trace]
    for name, value in run.memory.items():
        fields += [f"m:{name}", dump_json(value, f"memory field {name!r}")]
    for name, total in run.usage.items():
        fields += [f"{FIELD}{name}", total]
    return fields


async def _nothing() -> None:
    """An operation that does nothing (for `_call` to check the server first)."""


def _glob(text: str) -> str:
    """`text` with the characters SCAN's MATCH treats specially escaped."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


def _deadline_arg(deadline: float | None) -> str:
    return "" if deadline is None else repr(deadline)


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))
