"""`EmbeddedStore`: a durable store that needs no server, on SQLite in WAL mode.

Why SQLite: it ships with Python, a transaction is atomic and durable across a process crash,
and several processes can share one file safely. WAL lets readers work from a consistent
snapshot beside the one writer, and `BEGIN IMMEDIATE` takes the write lock up front, so a
commit's checks and writes are one serialized unit, like the Lua script on Redis.

Tables (one row per thing, so a commit writes what changed, not the whole memory):

    runs     run_id, agent, version, state, seq, status, created_at, updated_at,
             fence, holder, crashes, lease_owner, lease_expires, deadline, expires_at,
             nonce, lease_boot, trace
    memory   (run_id, name) -> json          one row per memory field
    events   (run_id, seq)  -> json          one row per commit, seq 0 is the creation
    keys     (run_id, key)  -> seq           idempotency keys

`PRAGMA user_version` holds the schema version; a file of another version is refused.
A commit runs one read and the writes it must (the run row, the event, the key, the patch);
WAL checkpoints run on a thread of their own (`_checkpoint.py`), not inside a commit.
Lease expiry is on the machine's monotonic clock, which every process of one boot shares,
kept with the boot's id (`lease_boot`): a step of the wall clock cannot make a live holder's
lease look expired, and a lease of an earlier boot is expired (its holder is gone). Where the
system names no boot, the wall clock is used.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from pydantic import JsonValue

from .._capabilities import Ledger, Limiter, RunQueue, ScopeCharge
from .._codec import dump_event, dump_json, load_event
from .._durability import Durability
from .._paging import RunCursor
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
from ..errors import DurabilityUnavailable, HistoryLost
from ..usage import increments
from . import ledger as _ledger
from . import limiter as _limiter
from . import live as _live
from . import queue as _queue
from ._db import Database, Synchronous
from ._leases import acquire, lease_clock
from ._rows import RawRun, decode, insert_run, read_checked, read_runs
from ._schema import (
    SELECT_RUN,
    UPDATE_RUN_ENDED,
    UPDATE_RUN_IF_AT,
    UPDATE_RUN_STATUS,
    UPDATE_RUN_STATUS_ENDED_IF_AT,
    check_indexes,
    collect,
)
from .paging import list_query
from .usage import add_run_usage
from .usage import create_tables as usage_tables

__all__ = ["EmbeddedStore"]


def _durability(url: str, named: str | None, given: str | None) -> Durability:
    """The level a store URL and `open_store(durability=)` ask for, if SQLite can give it."""
    if named is not None and given is not None and named != given:
        raise ValueError(f"store URL {url!r} says durability={named!r} but {given!r} was passed")
    level = Durability.parse(named or given or "primary")
    if level.replicas:
        raise DurabilityUnavailable(
            f"store URL {url!r}: durability {str(level)!r} needs replicas, and the embedded"
            " store has none: use 'primary' or 'fsync' (an fsync per commit), or a Redis"
            " store with replicas"
        )
    return level


class EmbeddedStore(Database):
    """A `storage.Store` in one SQLite file (or in process memory for `memory://`).

    Args:
        path: the database file (its folder is created), or ":memory:" for a private
            in-process store, gone when the store is closed.
        synchronous: "NORMAL" (the default) keeps every commit through a crash of any
            process; after a power loss or OS crash the last commits may be gone. "FULL"
            syncs each commit to disk before it returns, which is slower.

    Several processes may open the same file at once. The methods are coroutines to meet
    the protocol, but each runs one short synchronous transaction on the calling thread:
    nothing is awaited inside a transaction, so two coroutines never interleave in one, and
    a lock keeps threads sharing the store from doing so either. While another process
    writes, a call waits for up to 5 s, then raises `StoreUnavailable`.
    """

    live_maxlen = LIVE_MAXLEN
    live_ttl = LIVE_TTL

    def __init__(self, path: str | Path, *, synchronous: Synchronous = "NORMAL") -> None:
        """(The tables beside the runs are created IF NOT EXISTS: no schema version step.)"""
        side = (usage_tables, _ledger.create_tables, _limiter.create_tables,
                _live.create_table, _queue.create_tables)  # fmt: skip
        super().__init__(path, synchronous=synchronous, tables=side)
        self.durability = Durability(level="fsync" if synchronous == "FULL" else "primary")
        """The durability level of its commits: "fsync" with `synchronous` FULL."""

    @property
    def ledger(self) -> Ledger:
        return _ledger.EmbeddedLedger(self)

    @property
    def limiter(self) -> Limiter:
        return _limiter.EmbeddedLimiter(self)

    @property
    def queue(self) -> RunQueue:
        return _queue.EmbeddedQueue(self)

    @classmethod
    def from_url(cls, url: str, *, durability: str | None = None) -> EmbeddedStore:
        """`sqlite:///relative.db` (from the working directory), `sqlite:////absolute.db`,
        or `memory://`. `?durability=fsync` (or `durability="fsync"`; also
        `?synchronous=full`) syncs every commit to disk; "primary", the default, keeps
        commits through any process crash but not an OS crash or power loss. The replica
        levels are refused: an SQLite file has no replicas."""
        parts = urlsplit(url)
        options = dict(parse_qsl(parts.query))
        level = _durability(url, options.pop("durability", None), durability)
        if parts.scheme == "memory":
            if options or level.level != "primary":
                raise ValueError(
                    f"store URL {url!r}: a memory:// store takes no options, and keeps"
                    " nothing on disk (durability 'primary' only)"
                )
            return cls(":memory:")
        path = parts.path[1:] if parts.path.startswith("/") else parts.path
        if parts.scheme != "sqlite" or parts.netloc or not path:
            raise ValueError(
                f"not an embedded store URL: {url!r} (use sqlite:///relative/path.db,"
                " sqlite:////absolute/path.db or memory://)"
            )
        synchronous = options.pop("synchronous", "normal").upper()
        if options or synchronous not in ("NORMAL", "FULL"):
            raise ValueError(
                f"unknown options in store URL {url!r}: the only ones are"
                " durability=primary|fsync and synchronous=normal|full"
            )
        full = synchronous == "FULL" or level.level == "fsync"
        return cls(path, synchronous="FULL" if full else "NORMAL")

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
        check_run_id(run.run_id)
        run = replace(run, seq=0, holder="", crashes=0, usage={})
        event = creation_event(run, origin)
        what = f"create run {run.run_id!r}"
        raw, lease = self._transaction(
            what, "BEGIN IMMEDIATE", self._write_and_lease, run, event, owner, ttl, live
        )
        if raw is None:
            return (replace(run, holder=owner) if isinstance(lease, Lease) else run), lease
        return decode(raw, self._path), lease

    def _write_and_lease(
        self,
        run: RunRecord,
        event: Event,
        owner: str,
        ttl: float,
        live: Sequence[tuple[int, JsonValue]],
    ) -> tuple[RawRun | None, Lease | LeaseHeld | None]:
        """Insert `run` unless it exists (with its `live` items), take its lease for `owner`
        (if given); the existing run as stored (None when inserted)."""
        inserted = insert_run(self._db, run, [event])
        lease = acquire(self._db, run.run_id, owner, ttl) if owner else None
        if inserted:
            if live:
                _live.append(self._db, run.run_id, live, self.live_maxlen, self.live_ttl,
                             prune=False, lenient=True)  # fmt: skip
            return None, lease
        return read_runs(self._db, f"{SELECT_RUN} WHERE run_id = ?", (run.run_id,))[0], lease

    async def restore(self, run: RunRecord, events: Sequence[Event]) -> bool:
        check_history(run, events)
        written: bool = self._transaction(
            f"restore run {run.run_id!r}", "BEGIN IMMEDIATE", insert_run, self._db, run, events
        )
        return written

    async def load(self, run_id: str) -> RunRecord | None:
        """The run, checked against its history in the same snapshot (two index lookups): a
        run whose events or keys are missing (a file restored half-way, rows deleted by
        hand) is refused with `HistoryLost`, never resumed on a partial history."""
        rows, (first, last, keys) = self._transaction(
            f"load run {run_id!r}", "BEGIN", read_checked, self._db, run_id
        )
        if not rows:
            return None
        run = decode(rows[0], self._path)
        missing = []
        if not first or last != run.seq:
            held = f"up to seq {last}" if last >= 0 else "none"
            missing.append(
                f"its events should be seqs 0..{run.seq}, it holds {held}"
                + ("" if first or last < 0 else " without event 0")
            )
        if not keys:
            missing.append("its idempotency keys are gone")
        if missing:
            raise HistoryLost(run_id, self._where(run_id, "events"), "; ".join(missing))
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
        try:
            outcome = self._transaction(
                f"commit to run {run_id!r}", "BEGIN IMMEDIATE", self._commit, run_id,
                expected_seq, token, event, scope_charge, live,
            )  # fmt: skip
        except _Refused as refused:  # rolled back: nothing written
            return refused.outcome
        if self._checkpoints is not None:
            self._checkpoints.due()
        return outcome

    def _commit(
        self,
        run_id: str,
        expected_seq: int,
        token: int,
        event: Event,
        scope_charge: ScopeCharge | None,
        live: Sequence[tuple[int, JsonValue]],
    ) -> CommitOutcome:
        # Only writes, each checked as it is made: the key (the table refuses a duplicate),
        # then the run row, set only at the expected seq and fence, guessing that the status
        # changes just when the commit stops the run (the status index is written only when
        # it changes). Only when that matches no row does one read say why (a refusal rolls
        # the key back), or show the guess wrong and the other update is made.
        db = self._db
        seq = expected_seq + 1
        try:
            db.execute("INSERT INTO keys VALUES (?, ?, ?)", (run_id, event.key, seq))
        except sqlite3.IntegrityError:  # the key was committed before; nothing written
            done = self._committed_at(run_id, event.key)
            if done is None:  # another constraint failed
                raise
            return Duplicate(seq=done)
        values = (seq, event.dest, event.ended_at or time.time(), event.deadline, event.version,
                  event.expires_at, run_id)  # fmt: skip
        at = (expected_seq, token, event.status)
        ended = event.status != "running"
        if ended:
            cas = db.execute(UPDATE_RUN_STATUS_ENDED_IF_AT, (event.status, *values, *at))
        else:
            cas = db.execute(UPDATE_RUN_IF_AT, (*values, *at))
        if cas.rowcount != 1:
            cur = db.execute("SELECT seq, fence FROM runs WHERE run_id = ?", (run_id,)).fetchone()
            if cur is None:
                raise KeyError(run_id)
            if cur[1] != token:
                raise _Refused(LeaseLost())
            if cur[0] != expected_seq:
                raise _Refused(Conflict(current_seq=int(cur[0])))
            if ended:  # it keeps its status
                db.execute(UPDATE_RUN_ENDED, values)
            else:  # it was not running
                db.execute(UPDATE_RUN_STATUS, (event.status, *values))
        if event.patch:
            db.executemany(
                "INSERT INTO memory (run_id, name, json) VALUES (?, ?, ?)"
                " ON CONFLICT (run_id, name) DO UPDATE SET json = excluded.json",
                [
                    (run_id, name, dump_json(value, f"memory field {name!r}"))
                    for name, value in event.patch.items()
                ],
            )
        if event.dropped:
            db.executemany(
                "DELETE FROM memory WHERE run_id = ? AND name = ?",
                [(run_id, name) for name in event.dropped],
            )
        db.execute("INSERT INTO events VALUES (?, ?, ?)", (run_id, seq, dump_event(event)))
        add_run_usage(db, run_id, increments(event))
        if scope_charge is not None:
            _ledger.charge_rows(db, scope_charge, event.key, increments(event), run_id)
        if live:
            _live.append(
                db, run_id, live, self.live_maxlen, self.live_ttl, prune=seq % 64 == 0, lenient=True
            )
        return Committed(seq=seq)

    def _committed_at(self, run_id: str, key: str) -> int | None:
        """The seq that idempotency key `key` was committed at, if it was."""
        row = self._db.execute(
            "SELECT seq FROM keys WHERE run_id = ? AND key = ?", (run_id, key)
        ).fetchone()
        return None if row is None else int(row[0])

    async def history(
        self, run_id: str, from_seq: int = 0, to_seq: int | None = None
    ) -> list[Event]:
        rows = self._transaction(
            f"read the history of {run_id!r}", "BEGIN", self._fetch,
            "SELECT seq, json FROM events WHERE run_id = ? AND seq >= ? AND (? IS NULL OR seq <= ?)"
            " ORDER BY seq",
            (run_id, from_seq, to_seq, to_seq),
        )  # fmt: skip
        return [load_event(raw, self._where(run_id, f"event {seq}")) for seq, raw in rows]

    def _fetch(self, query: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        return self._db.execute(query, params).fetchall()

    async def publish(self, run_id: str, entries: Sequence[tuple[int, JsonValue]]) -> None:
        if entries:
            self._transaction(
                f"publish live items of {run_id!r}", "BEGIN IMMEDIATE", _live.insert,
                self._db, run_id, entries, self.live_maxlen, self.live_ttl,
            )  # fmt: skip

    async def live(
        self, run_id: str, after: str | None = None, *, wait: float = 0.0, limit: int = 1000
    ) -> list[LiveEntry]:
        def fetch(query: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
            return self._transaction(
                f"read live items of {run_id!r}", "BEGIN", self._fetch, query, params
            )

        return await _live.read(fetch, run_id, after, wait, limit)

    async def acquire_lease(self, run_id: str, owner: str, ttl: float) -> Lease | LeaseHeld:
        return self._transaction(
            f"lease run {run_id!r}", "BEGIN IMMEDIATE", acquire, self._db, run_id, owner, ttl
        )

    async def renew_lease(self, lease: Lease) -> bool:
        boot, now = lease_clock()
        return self._transaction(
            f"renew the lease on {lease.run_id!r}", "BEGIN IMMEDIATE", self._update,
            "UPDATE runs SET lease_owner = ?, lease_expires = ?, lease_boot = ?"
            " WHERE run_id = ? AND fence = ? AND holder = ?",
            (lease.owner, now + lease.ttl, boot, lease.run_id, lease.token, lease.owner),
        )  # fmt: skip

    async def release_lease(self, lease: Lease) -> None:
        self._transaction(
            f"release the lease on {lease.run_id!r}", "BEGIN IMMEDIATE", self._update,
            "UPDATE runs SET holder = '', lease_owner = '', lease_expires = 0"
            " WHERE run_id = ? AND fence = ?",
            (lease.run_id, lease.token),
        )  # fmt: skip

    def _update(self, query: str, params: tuple[Any, ...]) -> bool:
        return self._db.execute(query, params).rowcount == 1

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
        query, params = list_query(
            SELECT_RUN, agent=agent, status=status, state=state, since=since, until=until,
            before=before, limit=limit, id_contains=id_contains,
        )  # fmt: skip
        rows = self._transaction("list runs", "BEGIN", read_runs, self._db, query, params)
        return [decode(raw, self._path) for raw in rows]

    async def gc(self, now: float) -> int:
        """Delete the runs whose retention ran out (Redis expires them by itself)."""
        removed: int = self._transaction(
            "collect expired runs", "BEGIN IMMEDIATE", collect, self._db, now, self.live_ttl
        )
        return removed

    async def reindex(self) -> int:
        """SQLite keeps its indexes itself; this checks them (`REINDEX`)."""
        count: int = self._transaction("reindex", "BEGIN IMMEDIATE", check_indexes, self._db)
        return count

    async def due(self, now: float, *, limit: int = 100) -> list[str]:
        rows = self._transaction(
            "list due runs", "BEGIN", self._fetch,
            "SELECT run_id FROM runs WHERE deadline <= ? ORDER BY deadline LIMIT ?",
            (now, max(limit, 0)),
        )  # fmt: skip
        return [str(run_id) for (run_id,) in rows]


class _Refused(Exception):
    """A commit refused after its first write: raised to roll it back, then returned."""

    def __init__(self, outcome: CommitOutcome) -> None:
        self.outcome = outcome
