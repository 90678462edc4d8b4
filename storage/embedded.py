"""`EmbeddedStore`: a durable store that needs no server, on SQLite in WAL mode.

Why SQLite: it ships with Python, a transaction is atomic and durable across a process crash,
and several processes can share one file safely (WAL lets readers run beside the one writer;
`BEGIN IMMEDIATE` takes the write lock up front, so a commit's checks and writes are one
serialized unit, like the Lua script on Redis).

Tables (one row per thing, so a commit writes what changed, not the whole memory):

    runs     run_id, agent, version, state, seq, status, created_at, updated_at,
             fence, holder, crashes, lease_owner, lease_expires
    memory   (run_id, name) -> json          one row per memory field
    events   (run_id, seq)  -> json          one row per commit
    keys     (run_id, key)  -> seq           idempotency keys
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import JsonValue

from ._codec import dump_event, dump_json, load_event, load_json, run_from_fields
from .base import (
    CommitOutcome,
    Committed,
    Conflict,
    Duplicate,
    Event,
    Lease,
    LeaseHeld,
    LeaseLost,
    RunRecord,
    RunStatus,
    check_run_id,
)
from .errors import StorageError

__all__ = ["EmbeddedStore"]

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, agent TEXT NOT NULL, version INTEGER NOT NULL,
    state TEXT NOT NULL, seq INTEGER NOT NULL, status TEXT NOT NULL,
    created_at REAL NOT NULL, updated_at REAL NOT NULL, fence INTEGER NOT NULL DEFAULT 0,
    holder TEXT NOT NULL DEFAULT '', crashes INTEGER NOT NULL DEFAULT 0,
    lease_owner TEXT NOT NULL DEFAULT '', lease_expires REAL NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS runs_by_update ON runs (updated_at);
CREATE TABLE IF NOT EXISTS memory (
    run_id TEXT NOT NULL, name TEXT NOT NULL, json TEXT NOT NULL, PRIMARY KEY (run_id, name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
    run_id TEXT NOT NULL, seq INTEGER NOT NULL, json TEXT NOT NULL, PRIMARY KEY (run_id, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS keys (
    run_id TEXT NOT NULL, key TEXT NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY (run_id, key)
) WITHOUT ROWID;
"""
_RUN_COLUMNS = "agent, version, state, seq, status, created_at, updated_at, holder, crashes"


class EmbeddedStore:
    """A `storage.Store` in one SQLite file (or in process memory for `memory://`).

    Args:
        path: the database file (its folder is created), or ":memory:".
        synchronous: "NORMAL" (the default) survives any process crash; after a power loss
            the last commits may be gone. "FULL" syncs every commit to disk.

    The methods are coroutines to meet the protocol, but each runs one short synchronous
    transaction on the event-loop thread: nothing is awaited inside a transaction, so two
    coroutines can never interleave in one.
    """

    def __init__(
        self, path: str | Path, *, synchronous: Literal["NORMAL", "FULL"] = "NORMAL"
    ) -> None:
        self._path = str(path)
        if self._path != ":memory:":
            Path(self._path).parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(
                self._path, isolation_level=None, check_same_thread=False, timeout=5.0
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={synchronous}")
            self._db.execute("PRAGMA busy_timeout=5000")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            raise StorageError(f"cannot open the store {self._path}: {exc}") from None

    @classmethod
    def from_url(cls, url: str) -> EmbeddedStore:
        """`sqlite:///relative.db`, `sqlite:////absolute.db`, or `memory://`."""
        parts = urlsplit(url)
        if parts.scheme == "memory":
            return cls(":memory:")
        path = parts.path[1:] if parts.path.startswith("/") else parts.path
        if parts.scheme != "sqlite" or not path:
            raise ValueError(
                f"not an embedded store URL: {url!r} (use sqlite:///PATH or memory://)"
            )
        return cls(path)

    @property
    def path(self) -> str:
        return self._path

    @property
    def connection(self) -> sqlite3.Connection:
        return self._db

    def _migrate(self) -> None:
        (version,) = self._db.execute("PRAGMA user_version").fetchone()
        if version == 0:
            self._db.executescript(_SCHEMA + f"PRAGMA user_version={SCHEMA_VERSION};")
        elif version != SCHEMA_VERSION:
            raise StorageError(
                f"{self._path} has store schema version {version}; this agentfsm reads"
                f" version {SCHEMA_VERSION}"
            )

    def _where(self, run_id: str, what: str) -> str:
        return f"{self._path} {what} of run {run_id!r}"

    def _write(self, op: Any, *args: Any) -> Any:
        """Run `op(*args)` in one `BEGIN IMMEDIATE` transaction; roll back on any error."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise StorageError(f"cannot write to {self._path}: {exc}") from None
        try:
            result = op(*args)
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")
        return result

    async def create(self, run: RunRecord) -> RunRecord:
        check_run_id(run.run_id)
        created = self._write(self._create, run)
        if created:
            return run
        stored = await self.load(run.run_id)
        if stored is None:
            raise StorageError(f"run {run.run_id!r} vanished while being created")
        return stored

    def _create(self, run: RunRecord) -> bool:
        db = self._db
        if db.execute("SELECT 1 FROM runs WHERE run_id = ?", (run.run_id,)).fetchone():
            return False
        db.execute(
            f"INSERT INTO runs (run_id, {_RUN_COLUMNS}) VALUES (?, ?, ?, ?, 0, ?, ?, ?, '', 0)",
            (run.run_id, run.agent, run.version, run.state, run.status, run.created_at,
             run.updated_at),
        )  # fmt: skip
        db.executemany(
            "INSERT INTO memory (run_id, name, json) VALUES (?, ?, ?)",
            [(run.run_id, name, dump_json(value)) for name, value in run.memory.items()],
        )
        event = Event(
            seq=0, trigger="start", kind="start", source="", dest=run.state, status=run.status,
            key=f"{run.run_id}:start", patch=run.memory, started_at=run.created_at,
            ended_at=run.created_at,
        )  # fmt: skip
        db.execute("INSERT INTO events VALUES (?, 0, ?)", (run.run_id, dump_event(event)))
        db.execute("INSERT INTO keys VALUES (?, ?, 0)", (run.run_id, event.key))
        return True

    async def load(self, run_id: str) -> RunRecord | None:
        row = self._db.execute(
            f"SELECT {_RUN_COLUMNS} FROM runs WHERE run_id = ?", (run_id,)
        ).fetchone()
        if row is None:
            return None
        memory: dict[str, JsonValue] = {
            name: load_json(raw, self._where(run_id, f"memory field {name!r}"))
            for name, raw in self._db.execute(
                "SELECT name, json FROM memory WHERE run_id = ?", (run_id,)
            )
        }
        fields = {k: str(v) for k, v in zip(_RUN_COLUMNS.split(", "), row, strict=True)}
        return run_from_fields(run_id, fields, memory, self._where(run_id, "runs row"))

    async def commit(
        self, run_id: str, *, expected_seq: int, token: int, event: Event
    ) -> CommitOutcome:
        if event.seq != expected_seq + 1:
            raise ValueError(f"event seq {event.seq} does not follow expected seq {expected_seq}")
        outcome: CommitOutcome = self._write(self._commit, run_id, expected_seq, token, event)
        return outcome

    def _commit(self, run_id: str, expected_seq: int, token: int, event: Event) -> CommitOutcome:
        db = self._db
        done = db.execute(
            "SELECT seq FROM keys WHERE run_id = ? AND key = ?", (run_id, event.key)
        ).fetchone()
        if done is not None:
            return Duplicate(seq=int(done[0]))
        cur = db.execute("SELECT seq, fence FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        if cur is None:
            raise KeyError(run_id)
        if cur[1] != token:
            return LeaseLost()
        if cur[0] != expected_seq:
            return Conflict(current_seq=int(cur[0]))
        seq = expected_seq + 1
        db.execute(
            "UPDATE runs SET seq = ?, state = ?, status = ?, updated_at = ?, crashes = 0"
            " WHERE run_id = ?",
            (seq, event.dest, event.status, event.ended_at or time.time(), run_id),
        )
        db.executemany(
            "INSERT INTO memory (run_id, name, json) VALUES (?, ?, ?)"
            " ON CONFLICT (run_id, name) DO UPDATE SET json = excluded.json",
            [(run_id, name, dump_json(value)) for name, value in event.patch.items()],
        )
        db.execute("INSERT INTO events VALUES (?, ?, ?)", (run_id, seq, dump_event(event)))
        db.execute("INSERT INTO keys VALUES (?, ?, ?)", (run_id, event.key, seq))
        return Committed(seq=seq)

    async def history(self, run_id: str, from_seq: int = 0) -> list[Event]:
        rows = self._db.execute(
            "SELECT seq, json FROM events WHERE run_id = ? AND seq >= ? ORDER BY seq",
            (run_id, from_seq),
        ).fetchall()
        return [load_event(raw, self._where(run_id, f"event {seq}")) for seq, raw in rows]

    async def acquire_lease(self, run_id: str, owner: str, ttl: float) -> Lease | LeaseHeld:
        got: Lease | LeaseHeld = self._write(self._acquire, run_id, owner, ttl)
        return got

    def _acquire(self, run_id: str, owner: str, ttl: float) -> Lease | LeaseHeld:
        row = self._db.execute(
            "SELECT fence, holder, crashes, lease_owner, lease_expires FROM runs WHERE run_id = ?",
            (run_id,),
        ).fetchone()
        if row is None:
            raise KeyError(run_id)
        fence, holder, crashes, lease_owner, lease_expires = row
        now = time.time()
        if lease_owner and lease_expires > now:
            return LeaseHeld(run_id=run_id, owner=lease_owner, expires_in=lease_expires - now)
        if holder:  # held, never released, expired: its holder died
            crashes += 1
        token = fence + 1
        self._db.execute(
            "UPDATE runs SET fence = ?, holder = ?, crashes = ?, lease_owner = ?,"
            " lease_expires = ? WHERE run_id = ?",
            (token, owner, crashes, owner, now + ttl, run_id),
        )
        return Lease(run_id=run_id, owner=owner, token=token, ttl=ttl, crashes=crashes)

    async def renew_lease(self, lease: Lease) -> bool:
        renewed: bool = self._write(self._renew, lease)
        return renewed

    def _renew(self, lease: Lease) -> bool:
        cur = self._db.execute(
            "UPDATE runs SET lease_owner = ?, lease_expires = ? WHERE run_id = ? AND fence = ?",
            (lease.owner, time.time() + lease.ttl, lease.run_id, lease.token),
        )
        return cur.rowcount == 1

    async def release_lease(self, lease: Lease) -> None:
        self._write(
            self._db.execute,
            "UPDATE runs SET holder = '', lease_owner = '', lease_expires = 0"
            " WHERE run_id = ? AND fence = ?",
            (lease.run_id, lease.token),
        )

    async def list_runs(
        self, *, agent: str | None = None, status: RunStatus | None = None, limit: int = 100
    ) -> list[RunRecord]:
        ids = [
            run_id
            for (run_id,) in self._db.execute(
                "SELECT run_id FROM runs WHERE (? IS NULL OR agent = ?)"
                " AND (? IS NULL OR status = ?) ORDER BY updated_at DESC LIMIT ?",
                (agent, agent, status, status, limit),
            ).fetchall()
        ]
        runs = [await self.load(run_id) for run_id in ids]
        return [r for r in runs if r is not None]

    async def close(self) -> None:
        self._db.close()
