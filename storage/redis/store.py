"""`RedisStore`: runs in Redis, each commit one `EVALSHA` of `scripts/commit.lua`.

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
    Beside them, in this folder: the live channel (`live.py`), scope ledgers and set limits
    (`ledger.py`), rate limits (`limiter.py`), the run queue (`queue.py`).

On standalone Redis the scripts keep the indexes too: `create.lua` and `commit.lua` get their
keys, so a start and every commit are one round trip. On Cluster the indexes are in other
slots (`_indexes.py` says how they stay right through any crash).
A run that ends with retention (`Event.expires_at`) gets its keys expired by Redis then.

Tenants stay apart: a prefix is 1-64 letters, digits, `_`, `.`, `-` (`PREFIX_ALPHABET`),
so it never holds the `:` that ends it, nor a glob character. Every key of prefix P starts
with `P:` and no key of another prefix can: no pattern one tenant scans (`P:agent:*`,
`P:{*}:run`) can match another tenant's keys, and each key a scan finds is parsed again
before it is used. Prefixes an older agentfsm accepted (with `:`, say) are refused with
the command that moves their keys (`python -m storage.rekey`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from pydantic import JsonValue

from .._capabilities import Ledger, Limiter, RunQueue, ScopeCharge
from .._codec import dump_event, dump_json, live_rows, load_event
from .._durability import PRIMARY, Durability
from .._paging import TOP, RunCursor
from ..base import (
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
from ..errors import CorruptData
from ..process import free_dead
from ..usage import increments
from . import _indexes, _integrity
from . import live as _live
from ._base import RedisBase
from ._bound import deadline_arg, lua_increments, ms, run_fields
from ._connect import Client, connector
from ._durable import behind, compared, confirm, noted, outcome_unknown, wait_command
from ._errors import answers, talking
from .ledger import RedisLedger
from .limiter import RedisLimiter
from .queue import RedisQueue

__all__ = ["RedisStore"]


class RedisStore(RedisBase):
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
        self, client: Client, *, prefix: str = "agentfsm", where: str = "redis",
        durability: Durability = PRIMARY,
    ) -> None:  # fmt: skip
        super().__init__(client, prefix=prefix, where=where, durability=durability)
        self._ledger = RedisLedger(self)
        self._limiter = RedisLimiter(self)
        self._queue = RedisQueue(self)

    @classmethod
    def from_url(
        cls, url: str, *, prefix: str = "agentfsm", retries: int = 8,
        durability: str | None = None,
    ) -> RedisStore:  # fmt: skip
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

        Behind Sentinel: `redis+sentinel://HOST:PORT[,HOST:PORT]/SERVICE[/DB]` (credentials
        in the URL are the Redis servers'): every new connection asks the Sentinels for the
        service's primary, so a failover is ridden through within `retry_for`.

        `?durability=LEVEL` (or `durability=`): what a commit waits for before it is
        acknowledged, `?durability_timeout=SECONDS` how long (`storage._durability`). A
        level the server cannot give is refused (`DurabilityUnavailable`) by the store's
        first call or `ping`; one not reached in time makes a commit `OutcomeUnknown`.

        Raises `ValueError` for a URL whose path is not a database number or whose options
        are unknown or not numbers where numbers belong.
        """
        found = connector(url, prefix, retries, durability)
        store = cls(found.connect(), prefix=found.prefix, where=found.where)
        store.durability = found.durability  # (set after: subclasses keep their __init__)
        store._reconnect = found.connect
        return store

    @property
    def ledger(self) -> Ledger:
        return self._ledger

    @property
    def limiter(self) -> Limiter:
        return self._limiter

    @property
    def queue(self) -> RunQueue:
        return self._queue

    async def create(self, run: RunRecord, *, origin: JsonValue = None) -> RunRecord:
        stored, _ = await self._create_and_lease(run, origin, "", 0)
        return stored

    async def start(
        self, run: RunRecord, *, owner: str, ttl: float, origin: JsonValue = None,
        live: Sequence[tuple[int, JsonValue]] = (),
    ) -> tuple[RunRecord, Lease | LeaseHeld]:  # fmt: skip
        stored, lease = await self._create_and_lease(run, origin, owner, ttl, live)
        assert lease is not None
        return stored, lease

    async def _create_and_lease(
        self, run: RunRecord, origin: JsonValue, owner: str, ttl: float,
        live: Sequence[tuple[int, JsonValue]] = (),
    ) -> tuple[RunRecord, Lease | LeaseHeld | None]:  # fmt: skip
        """One `create.lua` (two when a provably dead holder's lease is taken over)."""
        check_run_id(run.run_id)
        event = creation_event(run, origin)
        fields = run_fields(replace(run, seq=0, holder="", crashes=0, usage={}))
        keys = self._keys(run.run_id, "run", "events", "keys", "lease", "live")
        if self._indexes:
            keys += [f"{self._prefix}:runs", self._by_agent(run.agent)]
            keys += [self._by_status(run.status), self._deadlines]
        else:
            await _indexes.index_run(self, run)  # first: an entry without a run is harmless
            if run.deadline is not None:
                await _indexes.index_deadline(self, run.run_id, run.deadline)
        head = [dump_event(event), event.key, deadline_arg(run.deadline), owner, ms(ttl)]
        items = _live.commit_args(live_rows(live, run.run_id), self.live_maxlen, self.live_ttl)
        tail = [repr(run.created_at), repr(run.updated_at), *items, *fields]

        async def attempt(dead: list[str]) -> tuple[tuple[Any, ...], list[str]]:
            args = [*head, dead[0] if dead else "", *tail]  # take over a dead holder's lease
            bound = self._on_this_loop()
            what = f"create run {run.run_id!r}"
            async with talking(self, what):
                created, got, raw = await self._durably(
                    bound.run(bound.script("create"), keys, args, self._wait), what
                )
                if not created and self._wait:  # created before: by a try whose wait failed?
                    await confirm(self, run.run_id, what)
            lease = self._lease_of(run.run_id, owner, ttl, got) if owner else None
            return (created, lease, raw), [lease.owner] if isinstance(lease, LeaseHeld) else []

        created, lease, raw = await free_dead(attempt)
        if created:
            self._remember(run.run_id, run.status, run.nonce)
            noted(self, run.run_id, 0)
            return (replace(run, holder=owner) if isinstance(lease, Lease) else run), lease
        stored = dict(zip(raw[::2], raw[1::2], strict=True))
        found = self._decode_run(run.run_id, stored, self.key(run.run_id, "run"))
        return found, compared(self, lease, found.seq)

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
        fields = run_fields(run)
        args: list[Any] = [len(fields) // 2, *fields]
        for e in events:
            args += ["0-1" if e.seq == 0 else f"{e.seq}-0", dump_event(e), e.key, e.seq]
        keys = self._keys(run.run_id, "run", "events", "keys")
        if run.deadline is not None:
            await _indexes.index_deadline(self, run.run_id, run.deadline)
        await _indexes.index_run(self, run)  # first: an entry without a run is harmless
        async with talking(self, f"restore run {run.run_id!r}"):
            written = await self.script("restore")(keys=keys, args=args)  # retention too
        return bool(written)

    async def load(self, run_id: str) -> RunRecord | None:
        """The run, checked against what its history still holds in the same round trip
        (`_integrity`): a run whose events or keys the server lost is refused. Scope charges
        a crash left pending in the run's slot (Cluster) are made first (`_indexes`)."""
        key = self.key(run_id, "run")
        async with talking(self, f"load run {run_id!r}", key=key):
            pipe = self._client.pipeline(transaction=False)
            pipe.hgetall(key)
            pipe.hgetall(self.key(run_id, "charges"))
            _integrity.ask(pipe, self.key(run_id, "events"), self.key(run_id, "keys"))
            raw, pending, *kept = await pipe.execute()
        if pending:
            await _indexes.settle_charges(self, run_id, pending)
        if not raw:
            return None
        run = self._decode_run(run_id, raw, key)
        _integrity.check(run, key, kept)
        return run

    async def commit(
        self,
        run_id: str,
        *,
        expected_seq: int,
        token: int,
        event: Event,
        scope_charge: ScopeCharge | None = None,
        live: Sequence[tuple[int, JsonValue]] = (),
    ) -> CommitOutcome:
        if event.seq != expected_seq + 1:
            raise ValueError(f"event seq {event.seq} does not follow expected seq {expected_seq}")
        charge = ""
        if scope_charge is not None and increments(event):
            # Standalone: charged by the script itself. Cluster: the scope is in another slot;
            # the script keeps the charge in the run's hash, and it is made just after.
            charge = (
                str(max(int(scope_charge.expires_at * 1000), 0)) if self.standalone
                else _indexes.pending_charge(scope_charge, event)
            )  # fmt: skip
        args: list[Any] = [
            expected_seq,
            token,
            event.key,
            event.dest,
            event.status,
            repr(event.ended_at or time.time()),
            deadline_arg(event.deadline),
            "" if event.version is None else event.version,
            "\n".join(event.dropped),
            dump_event(event),
            "" if event.expires_at is None else repr(event.expires_at),
            lua_increments(event),
            charge,
            *_live.commit_args(live_rows(live, run_id), self.live_maxlen, self.live_ttl),
        ]
        for name, value in event.patch.items():
            args += [name, dump_json(value, f"memory field {name!r}")]
        keys = self.commit_keys(run_id)
        if charge and scope_charge is not None:
            keys += (
                _indexes.scope_keys(self._prefix, scope_charge.scope, scope_charge.period)
                if self.standalone else [self.key(run_id, "charges")]
            )  # fmt: skip
        if not self._indexes:
            await _indexes.before_commit(self, run_id, event, charge)
        bound = self._on_this_loop()
        what = f"commit of run {run_id!r} seq {event.seq} (key {event.key!r})"
        async with talking(self, f"commit to run {run_id!r}"):
            verdict, seq, *previous = await self._durably(
                bound.run(bound.script("commit"), keys, args, self._wait), what
            )
            if verdict == "duplicate" and self._wait:
                await confirm(self, run_id, what)  # the earlier write of the key, too
        match verdict:
            case "ok" if self._indexes:  # the script kept them
                self._remember(run_id, event.status)
                noted(self, run_id, int(seq))
                return Committed(seq=int(seq))
            case "ok":
                await _indexes.after_commit(self, run_id, event, previous, charge)
                self._remember(run_id, event.status)
                noted(self, run_id, int(seq))
                return Committed(seq=int(seq))
            case "duplicate":
                return Duplicate(seq=int(seq))
            case "conflict":
                behind(self, run_id, int(seq))
                return Conflict(current_seq=int(seq))
            case "lease_lost":
                behind(self, run_id, int(seq))
                return LeaseLost()
            case _:
                raise KeyError(run_id)

    @property
    def _wait(self) -> tuple[Any, ...]:
        """What a write waits for behind its script (`WAIT`/`WAITAOF`), () for nothing."""
        return wait_command(self.durability)

    async def _durably(self, replied: Any, what: str) -> Any:
        """The script's reply, once the wait sent behind it says the store's durability
        level was reached; `OutcomeUnknown` when not. (A script that wrote nothing, such as
        a refused commit, passes whatever the wait says: nothing of it can be lost.)"""
        reply = await replied
        if not self._wait:
            return reply
        reply, waited = reply
        if reply[0] in ("ok", 1):  # commit.lua applied it; create.lua created the run
            unknown = outcome_unknown(self, what, waited)
            if unknown is not None:
                raise unknown
        return reply

    async def history(
        self, run_id: str, from_seq: int = 0, to_seq: int | None = None
    ) -> list[Event]:
        key = self.key(run_id, "events")
        start = "-" if from_seq <= 0 else f"{from_seq}-0"
        end = "+" if to_seq is None else str(to_seq)  # "N" is every id of N (0-1 too)
        if to_seq is not None and to_seq < max(from_seq, 0):
            return []
        async with talking(self, f"read the history of {run_id!r}", key=key):
            entries = await self._client.xrange(key, start, end)
        events = []
        for entry_id, fields in entries:
            where = f"{key} entry {entry_id}"
            if "e" not in fields:
                raise CorruptData(where, "no event field")
            events.append(load_event(fields["e"], where))
        return events

    async def publish(self, run_id: str, entries: Sequence[tuple[int, JsonValue]]) -> None:
        key = self.key(run_id, "live")
        async with talking(self, f"publish live items of {run_id!r}"):
            await _live.publish(self._client, key, entries, self.live_maxlen, self.live_ttl)

    async def live(
        self, run_id: str, after: str | None = None, *, wait: float = 0.0, limit: int = 1000
    ) -> list[LiveEntry]:
        key = self.key(run_id, "live")
        async with talking(self, f"read live items of {run_id!r}", key=key):
            return await _live.read(self._client, key, after, wait, limit)

    async def acquire_lease(self, run_id: str, owner: str, ttl: float) -> Lease | LeaseHeld:
        keys = self._keys(run_id, "run", "lease")

        async def attempt(dead: list[str]) -> tuple[Lease | LeaseHeld, list[str]]:
            args: list[Any] = ["acquire", owner, ms(ttl), 0, dead[0] if dead else ""]
            async with talking(self, f"lease run {run_id!r}"):
                reply = await self.script("lease")(keys=keys, args=args)
            if int(reply[0]) == 0:
                raise KeyError(run_id)
            got = self._lease_of(run_id, owner, ttl, reply)
            return got, [got.owner] if isinstance(got, LeaseHeld) else []

        lease = await free_dead(attempt)
        return compared(self, lease, lease.seq) if isinstance(lease, Lease) else lease

    async def renew_lease(self, lease: Lease) -> bool:
        keys = self._keys(lease.run_id, "run", "lease")
        args: list[Any] = ["renew", lease.owner, ms(lease.ttl), lease.token]
        async with talking(self, f"renew the lease on {lease.run_id!r}"):
            ok = await self.script("lease")(keys=keys, args=args)
        return bool(ok)

    async def release_lease(self, lease: Lease) -> None:
        keys = self._keys(lease.run_id, "run", "lease")
        args: list[Any] = ["release", lease.owner, 0, lease.token]
        async with talking(self, f"release the lease on {lease.run_id!r}"):
            await self.script("lease")(keys=keys, args=args)

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
            return await _indexes.page(
                self, agent=agent, status=status, state=state, since=since, until=until,
                limit=limit, before=before or TOP, id_contains=id_contains,
            )  # fmt: skip
        return await _indexes.list_runs(
            self, agent=agent, status=status, state=state, since=since, until=until, limit=limit
        )

    async def gc(self, now: float) -> int:
        """Redis expires finished runs itself: this drops index entries of runs gone, and
        settles what a crash on Cluster left pending (index entries, scope charges)."""
        return await _indexes.gc(self)

    async def reindex(self) -> int:
        return await _indexes.reindex(self)

    async def due(self, now: float, *, limit: int = 100) -> list[str]:
        return await _indexes.due(self, now, limit)

    async def ping(self, within: float) -> None:
        await answers(self, within)

    async def close(self) -> None:
        if self._acked is not None:
            self._acked.flush()
        await self._client.aclose()
