"""`PostgresStore`: the Store contract on PostgreSQL, for teams whose durable state already
lives there (asyncpg; works behind PgBouncer in transaction mode).

Tables, in a schema of the store's own (`?schema=NAME`, default "agentfsm"; `sql/`):

    runs     run_id, agent, version, state, seq, status, created_at, updated_at, fence,
             holder, crashes, lease_owner, lease_expires, deadline, expires_at, nonce,
             trace, usage (jsonb totals)          the small row every commit updates
    memory   (run_id, name) -> json              one row per memory field
    events   (run_id, seq) -> key, json          append-only; (run_id, key) unique
    live, live_heads, scope_usage, scope_charges, scope_held, limits, rate_state, rate_slots, jobs,
    dead_letters, workers, schema_version

Each call is one statement, one transaction: the multi-step ones (create + lease, commit,
lease, publish, gc, rate limits) are functions of the schema (`sql/001_schema.sql`), as the
Lua scripts are on Redis. Lease expiry, rate limits and queue idleness are on the server's
clock. A reader that waits (live items, queued jobs) LISTENs for the writers' NOTIFY and
looks again every quarter second besides, so it works behind a pooler that drops
notifications too.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pydantic import JsonValue

from .._capabilities import Ledger, Limiter, RunQueue, ScopeCharge
from .._codec import dump_event, dump_json, live_rows, load_event
from .._json import json_bytes
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
from ..errors import HistoryLost
from ..process import free_dead
from ..url import redact
from ..usage import increments
from . import live as _live
from ._connections import Connections, Settings, durability_of
from ._rows import decode, select_runs
from ._schema import check_schema
from .ledger import PostgresLedger
from .limiter import PostgresLimiter
from .queue import PostgresQueue

__all__ = ["PostgresStore"]

_OPTIONS = {"schema", "pool", "prepared", "retry_for", "command_timeout", "connect_timeout",
            "durability", "durability_timeout"}  # fmt: skip


class PostgresStore:
    """A store in a PostgreSQL database (`open_store("postgresql://host/db")`).

    Args:
        url: `postgresql://` or `postgres://` URL (libpq's form: user, password, host, port,
            database, and options such as `sslmode`). The store's own options:
            `schema=NAME` (default `prefix`), `pool=N` connections per event loop (10),
            `prepared=1` named prepared statements (not behind PgBouncer in transaction
            mode unless it tracks them), `retry_for=S` seconds calls are tried again while
            the server cannot be reached (5), `command_timeout=S` (10),
            `connect_timeout=S` (2).
        prefix: the schema when the URL names none.

    The schema is created, or brought up to date, when the store first connects.
    """

    live_maxlen = LIVE_MAXLEN
    live_ttl = LIVE_TTL

    def __init__(
        self, url: str, *, prefix: str = "agentfsm", durability: str | None = None
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("postgresql", "postgres"):
            raise ValueError(f"not a Postgres store URL: {redact(url)!r} (use postgresql://...)")
        query = parse_qsl(parts.query, keep_blank_values=True)
        ours = {k: v for k, v in query if k in _OPTIONS}
        theirs = [(k, v) for k, v in query if k not in _OPTIONS]
        schema = check_schema(ours.get("schema") or prefix)
        self.durability = durability_of(url, ours, durability)
        """The durability level of its commits (`storage._durability`): "primary" and "fsync"
        both mean the server's own `synchronous_commit` (on by default: each commit is
        acknowledged once its WAL is flushed); "fsync" is refused at the first call when the
        server has it off."""
        try:
            settings = Settings(
                dsn=urlunsplit(parts._replace(scheme="postgresql", query=urlencode(theirs))),
                where=f"{redact(urlunsplit(parts._replace(query='')))} schema {schema}",
                schema=schema,
                pool_size=int(ours.get("pool", 10)),
                prepared=ours.get("prepared", "0") in ("1", "true", "yes"),
                retry_for=float(ours.get("retry_for", 5.0)),
                command_timeout=float(ours.get("command_timeout", 10.0)),
                connect_timeout=float(ours.get("connect_timeout", 2.0)),
                flushed=self.durability.level == "fsync",
            )
        except ValueError as exc:
            raise ValueError(f"bad option in store URL {redact(url)!r}: {exc}") from None
        if settings.pool_size < 1:
            raise ValueError(f"bad option in store URL {redact(url)!r}: pool must be 1 or more")
        self.url = url
        self.schema = schema
        self.where = settings.where
        self._db = Connections(settings)
        s = schema
        self._select = select_runs(s)
        self._select_checked = select_runs(s, checks=True)
        self._channel_live = f"{s}.live"
        self._channel_jobs = f"{s}.jobs"

    @classmethod
    def from_url(
        cls, url: str, *, prefix: str = "agentfsm", durability: str | None = None
    ) -> PostgresStore:
        return cls(url, prefix=prefix, durability=durability)

    def __repr__(self) -> str:
        return f"PostgresStore({self.where!r})"

    @property
    def connections(self) -> Connections:
        """The store's connections (its ledger, limiter and queue call through them)."""
        return self._db

    @property
    def ledger(self) -> Ledger:
        return PostgresLedger(self._db, self.schema)

    @property
    def limiter(self) -> Limiter:
        return PostgresLimiter(self._db, self.schema)

    @property
    def queue(self) -> RunQueue:
        return PostgresQueue(self._db, self.schema, self._channel_jobs)

    # Runs and leases

    async def create(self, run: RunRecord, *, origin: JsonValue = None) -> RunRecord:
        stored, _ = await self._create_and_lease(run, origin, "", 0.0)
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
        check_run_id(run.run_id)
        run = replace(run, seq=0, holder="", crashes=0, usage={})
        event = creation_event(run, origin)
        names = list(run.memory)
        values = [json_bytes(run.memory[n], f"memory field {n!r}") for n in names]
        payload = dump_event(event).encode()
        rows = live_rows(live, run.run_id)
        sql = _live.create_sql(self.schema, bool(rows))
        items = self._live_args(rows) if rows else ()
        inserted = False

        async def attempt(dead: list[str]) -> tuple[Lease | LeaseHeld | None, list[str]]:
            nonlocal inserted
            row = await self._db.call(
                f"create run {run.run_id!r}",
                lambda c: c.fetchrow(
                    sql, run.run_id, run.agent, run.version, run.state, run.status,
                    run.created_at, run.deadline, run.nonce, run.expires_at, run.trace, names,
                    values, event.key, payload, owner, ttl, dead[0] if dead else None, *items,
                ),
            )  # fmt: skip
            inserted = inserted or bool(row["o_inserted"])
            if not owner:
                return None, []
            return _lease_of(run.run_id, owner, ttl, row)

        lease = await free_dead(attempt)
        if inserted:
            return (replace(run, holder=owner) if isinstance(lease, Lease) else run), lease
        stored = await self.load(run.run_id)
        if stored is None:  # deleted meanwhile (gc): as created, without a lease
            return await self._create_and_lease(run, origin, owner, ttl)
        return stored, lease

    async def restore(self, run: RunRecord, events: Sequence[Event]) -> bool:
        check_history(run, events)
        s = self.schema
        names = list(run.memory)
        values = [json_bytes(run.memory[n], f"memory field {n!r}") for n in names]
        rows = [(e.seq, e.key, dump_event(e).encode()) for e in events]

        async def write(c: Any) -> bool:
            async with c.transaction():
                added = await c.fetchval(
                    f"INSERT INTO {s}.runs (run_id, agent, version, state, seq, status,"
                    " created_at, updated_at, crashes, deadline, nonce, expires_at, trace, usage)"
                    " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
                    " ON CONFLICT (run_id) DO NOTHING RETURNING true",
                    run.run_id, run.agent, run.version, run.state, run.seq, run.status,
                    run.created_at, run.updated_at, run.crashes, run.deadline, run.nonce,
                    run.expires_at, run.trace, json.dumps(run.usage),
                )  # fmt: skip
                if not added:
                    return False
                await c.execute(
                    f"INSERT INTO {s}.memory SELECT $1, t.n, t.v FROM unnest($2::text[],"
                    " $3::bytea[]) AS t (n, v)",
                    run.run_id, names, values,
                )  # fmt: skip
                await c.execute(
                    f"INSERT INTO {s}.events SELECT $1, t.s, t.k, t.j FROM unnest($2::bigint[],"
                    " $3::text[], $4::bytea[]) AS t (s, k, j)",
                    run.run_id, [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows],
                )  # fmt: skip
                return True

        written: bool = await self._db.call(f"restore run {run.run_id!r}", write)
        return written

    async def load(self, run_id: str) -> RunRecord | None:
        """The run, checked against its history in the same statement (two index lookups):
        a run whose events are missing (rows deleted by hand, a backup restored half-way)
        is refused with `HistoryLost`, never resumed on a partial history."""
        row = await self._db.call(
            f"load run {run_id!r}",
            lambda c: c.fetchrow(f"{self._select_checked} WHERE r.run_id = $1", run_id),
        )
        if row is None:
            return None
        run = decode(row, self.where)
        last = -1 if row["last"] is None else int(row["last"])
        if not row["first"] or last != run.seq:
            held = f"up to seq {last}" if last >= 0 else "none"
            raise HistoryLost(
                run_id,
                f"{self.where} events of run {run_id!r}",
                f"its events (with their idempotency keys) should be seqs 0..{run.seq},"
                f" it holds {held}" + ("" if row["first"] or last < 0 else " without event 0"),
            )
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
        names = list(event.patch)
        values = [json_bytes(event.patch[n], f"memory field {n!r}") for n in names]
        usage = increments(event)
        rows = live_rows(live, run_id)
        args = (
            run_id, expected_seq, token, event.key, event.dest, event.status,
            event.ended_at or time.time(), event.deadline, event.version, event.expires_at,
            dump_event(event).encode(), names, values, list(event.dropped),
            json.dumps(usage) if usage else None,
            scope_charge.scope if scope_charge else None,
            scope_charge.period if scope_charge else None,
            scope_charge.expires_at if scope_charge else None,
            *self._live_args(rows),
        )  # fmt: skip
        sql = (
            f"SELECT {self.schema}.commit($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12,"
            " $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23)"
        )
        outcome, seq = await self._db.call(
            f"commit to run {run_id!r}", lambda c: c.fetchval(sql, *args)
        )
        if outcome == 0:
            return Committed(seq=seq)
        if outcome == 1:
            return Duplicate(seq=seq)
        if outcome == 2:
            return LeaseLost()
        if outcome == 3:
            return Conflict(current_seq=seq)
        raise KeyError(run_id)

    async def history(
        self, run_id: str, from_seq: int = 0, to_seq: int | None = None
    ) -> list[Event]:
        rows = await self._db.call(
            f"read the history of {run_id!r}",
            lambda c: c.fetch(
                f"SELECT seq, json FROM {self.schema}.events WHERE run_id = $1 AND seq >= $2"
                " AND ($3::bigint IS NULL OR seq <= $3) ORDER BY seq",
                run_id, from_seq, to_seq,
            ),
        )  # fmt: skip
        return [
            load_event(bytes(raw), f"{self.where} event {seq} of run {run_id!r}")
            for seq, raw in rows
        ]

    async def acquire_lease(self, run_id: str, owner: str, ttl: float) -> Lease | LeaseHeld:
        sql = f"SELECT * FROM {self.schema}.acquire($1, $2, $3, $4)"

        async def attempt(dead: list[str]) -> tuple[Lease | LeaseHeld, list[str]]:
            row = await self._db.call(
                f"lease run {run_id!r}",
                lambda c: c.fetchrow(sql, run_id, owner, ttl, dead[0] if dead else None),
            )
            return _lease_of(run_id, owner, ttl, row)

        return await free_dead(attempt)

    async def renew_lease(self, lease: Lease) -> bool:
        s = self.schema
        done = await self._db.call(
            f"renew the lease on {lease.run_id!r}",
            lambda c: c.fetchval(
                f"UPDATE {s}.runs SET lease_owner = $2, lease_expires = {s}.clock() + $4"
                " WHERE run_id = $1 AND fence = $3 AND holder = $2 RETURNING true",
                lease.run_id, lease.owner, lease.token, lease.ttl,
            ),
        )  # fmt: skip
        return bool(done)

    async def release_lease(self, lease: Lease) -> None:
        await self._db.call(
            f"release the lease on {lease.run_id!r}",
            lambda c: c.execute(
                f"UPDATE {self.schema}.runs SET holder = '', lease_owner = '', lease_expires = 0"
                " WHERE run_id = $1 AND fence = $2",
                lease.run_id, lease.token,
            ),
        )  # fmt: skip

    # Listings and upkeep

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
        where: list[str] = []
        params: list[Any] = []

        def add(clause: str, value: Any) -> None:
            params.append(value)
            where.append(clause.replace("?", f"${len(params)}"))

        paged = before is not None or id_contains is not None
        if paged:
            cursor = before or TOP
            params.extend([cursor[0], cursor[1]])
            where.append("(r.created_at, r.run_id) < ($1, $2)")
        for clause, value in (
            ("r.agent = ?", agent), ("r.status = ?", status), ("r.state = ?", state),
            ("r.updated_at >= ?", since), ("r.updated_at < ?", until),
        ):  # fmt: skip
            if value is not None:
                add(clause, value)
        if paged and id_contains is not None:
            add("strpos(r.run_id, ?) > 0", id_contains)
        if paged and until is not None:  # created_at <= updated_at < until
            add("r.created_at < ?", until)
        order = "r.created_at DESC, r.run_id DESC" if paged else "r.updated_at DESC"
        params.append(max(min(limit, 2**62), 0))
        sql = (
            f"{self._select}{' WHERE ' + ' AND '.join(where) if where else ''}"
            f" ORDER BY {order} LIMIT ${len(params)}"
        )
        rows = await self._db.call("list runs", lambda c: c.fetch(sql, *params))
        return [decode(row, self.where) for row in rows]

    async def due(self, now: float, *, limit: int = 100) -> list[str]:
        rows = await self._db.call(
            "list due runs",
            lambda c: c.fetch(
                f"SELECT run_id FROM {self.schema}.runs WHERE deadline <= $1"
                " ORDER BY deadline LIMIT $2",
                now, max(limit, 0),
            ),
        )  # fmt: skip
        return [str(r["run_id"]) for r in rows]

    async def gc(self, now: float) -> int:
        """Delete the runs whose retention ran out by `now`, each whole, in one transaction."""
        removed = await self._db.call(
            "collect expired runs",
            lambda c: c.fetchval(f"SELECT {self.schema}.collect($1, $2)", now, self.live_ttl),
        )
        return int(removed)

    async def reindex(self) -> int:
        """Postgres keeps its indexes itself; this rebuilds those of the runs table without
        blocking commits meanwhile (`CONCURRENTLY`)."""

        async def rebuild(c: Any) -> int:
            await c.execute(f"REINDEX TABLE CONCURRENTLY {self.schema}.runs")
            return int(await c.fetchval(f"SELECT count(*) FROM {self.schema}.runs"))

        return await self._db.call("reindex", rebuild)

    # The live channel

    def _live_args(self, rows: Sequence[tuple[int, str]]) -> tuple[Any, ...]:
        return _live.live_args(rows, self.live_maxlen, self.live_ttl, self._channel_live)

    async def publish(self, run_id: str, entries: Sequence[tuple[int, JsonValue]]) -> None:
        if not entries:
            return
        bases = [int(base) for base, _ in entries]
        items = [dump_json(item).encode() for _, item in entries]
        await self._db.call(
            f"publish live items of {run_id!r}",
            lambda c: c.execute(
                f"SELECT {self.schema}.publish($1, $2, $3, $4, $5, $6)",
                run_id, bases, items, self.live_maxlen, self.live_ttl, self._channel_live,
            ),
        )  # fmt: skip

    async def live(
        self, run_id: str, after: str | None = None, *, wait: float = 0.0, limit: int = 1000
    ) -> list[LiveEntry]:
        start = -1 if after is None else int(after)
        sql = (
            f"SELECT id, base, item FROM {self.schema}.live WHERE run_id = $1 AND id > $2"
            " ORDER BY id LIMIT $3"
        )

        async def fetch() -> list[Any]:
            rows: list[Any] = await self._db.call(
                f"read live items of {run_id!r}",
                lambda c: c.fetch(sql, run_id, start, max(limit, 0)),
            )
            return rows

        rows = await _live.wait_for(self._db, self._channel_live, fetch, wait)
        return [_live.entry(self.where, run_id, *row) for row in rows]

    async def ping(self, within: float) -> None:
        await self._db.ping(within)

    async def close(self) -> None:
        await self._db.close()


def _lease_of(run_id: str, owner: str, ttl: float, row: Any) -> tuple[Lease | LeaseHeld, list[str]]:
    """The answer of `acquire()` (or `create_run()`'s lease part), and the holder that
    stopped it (for the liveness rule)."""
    got = row["o_got"]
    if got == 0:
        raise KeyError(run_id)
    if got == -1:
        holder = str(row["o_holder"])
        held = LeaseHeld(
            run_id=run_id, owner=holder, expires_in=max(float(row["o_expires_in"]), 0.0)
        )
        return held, [holder]
    lease = Lease(
        run_id=run_id, owner=owner, token=int(row["o_token"]), ttl=ttl,
        crashes=int(row["o_crashes"]), seq=int(row["o_seq"]),
    )  # fmt: skip
    return lease, []
