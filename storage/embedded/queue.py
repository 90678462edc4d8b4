"""The run queue in the embedded store (`storage.base.RunQueue`): a table shared by every process
that opens the file, so workers run without a server too.

Tables, created IF NOT EXISTS when the store opens: `queue` (one row per job, numbered by
SQLite: never reused, so a row's number is its job id; `consumer` is "" until a worker claims
it, `touched` when its worker last said it was alive), `dead_letters`, `workers` (name ->
JSON heartbeat). A claim is one `BEGIN IMMEDIATE` transaction, so no two workers claim one
job; a waiting claim looks again every `_POLL` seconds (SQLite cannot notify another process).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pydantic import JsonValue

from .._capabilities import Job, JobKind, WorkerBeat, dump_beat, load_beat, prune_silent

if TYPE_CHECKING:
    from ._db import Database

__all__ = ["EmbeddedQueue", "create_tables"]

_POLL = 0.05
_TABLES = [
    """CREATE TABLE IF NOT EXISTS queue (
        id INTEGER PRIMARY KEY AUTOINCREMENT, agent TEXT NOT NULL, run_id TEXT NOT NULL,
        kind TEXT NOT NULL, event TEXT NOT NULL, payload TEXT NOT NULL,
        consumer TEXT NOT NULL DEFAULT '', touched REAL NOT NULL DEFAULT 0
    )""",
    "CREATE INDEX IF NOT EXISTS queue_by_agent ON queue (agent, consumer, id)",
    """CREATE TABLE IF NOT EXISTS dead_letters (
        id INTEGER PRIMARY KEY AUTOINCREMENT, agent TEXT NOT NULL, run_id TEXT NOT NULL,
        kind TEXT NOT NULL, reason TEXT NOT NULL, at REAL NOT NULL
    )""",
    "CREATE TABLE IF NOT EXISTS workers (name TEXT PRIMARY KEY, beat TEXT NOT NULL)",
]
_JOB = "SELECT id, agent, run_id, kind, event, payload FROM queue"


def create_tables(db: sqlite3.Connection) -> None:
    for statement in _TABLES:
        db.execute(statement)


def _job(row: tuple[Any, ...]) -> Job:
    job_id, agent, run_id, kind, event, payload = row
    return Job(
        id=str(job_id), agent=agent, run_id=run_id,
        kind=kind if kind in ("run", "event", "timeout") else "run",
        event=event, payload=json.loads(payload),
    )  # fmt: skip


class EmbeddedQueue:
    def __init__(self, store: Database) -> None:
        self._store = store

    @property
    def _db(self) -> sqlite3.Connection:
        return self._store.connection

    async def ensure_group(self, agents: Sequence[str]) -> None:
        """Nothing to make: every agent's jobs are rows of one table."""

    def _add(self, agent: str, run_id: str, kind: str, event: str, payload: JsonValue) -> str:
        cursor = self._db.execute(
            "INSERT INTO queue (agent, run_id, kind, event, payload) VALUES (?, ?, ?, ?, ?)",
            (agent, run_id, kind, event, json.dumps(payload)),
        )
        return str(cursor.lastrowid)

    async def enqueue(
        self,
        agent: str,
        run_id: str,
        kind: JobKind = "run",
        *,
        event: str = "",
        payload: JsonValue = None,
    ) -> str:
        entry: str = self._store._transaction(
            f"enqueue run {run_id!r}", "BEGIN IMMEDIATE", self._add, agent, run_id, kind, event,
            payload if kind == "event" else None,
        )  # fmt: skip
        return entry

    def _take(
        self, consumer: str, agents: Sequence[str], count: int, idle: float | None
    ) -> list[Job]:
        marks = ",".join("?" * len(agents))
        now = time.time()
        params: tuple[float, ...] = ()
        if idle is None:
            where = "consumer = ''"
        else:
            where, params = "consumer != '' AND touched <= ?", (now - idle,)
        rows = self._db.execute(
            f"{_JOB} WHERE agent IN ({marks}) AND {where} ORDER BY id LIMIT ?",
            (*agents, *params, count),
        ).fetchall()
        self._db.executemany(
            "UPDATE queue SET consumer = ?, touched = ? WHERE id = ?",
            [(consumer, now, row[0]) for row in rows],
        )
        return [_job(row) for row in rows]

    async def claim(
        self, consumer: str, agents: Sequence[str], count: int, block: float
    ) -> list[Job]:
        if count <= 0 or not agents:
            return []
        give_up = time.monotonic() + block
        while True:
            jobs: list[Job] = self._store._transaction(
                "claim jobs", "BEGIN IMMEDIATE", self._take, consumer, agents, count, None
            )
            if jobs or time.monotonic() >= give_up:
                return jobs
            await asyncio.sleep(_POLL)

    async def reclaim(
        self, consumer: str, agents: Sequence[str], idle: float, count: int
    ) -> list[Job]:
        if count <= 0 or not agents:
            return []
        jobs: list[Job] = self._store._transaction(
            "reclaim jobs", "BEGIN IMMEDIATE", self._take, consumer, agents, count, idle
        )
        return jobs

    def _write(self, query: str, rows: list[tuple[Any, ...]]) -> None:
        self._db.executemany(query, rows)

    async def touch(self, consumer: str, jobs: Sequence[Job]) -> None:
        now = time.time()
        self._store._transaction(
            "touch jobs", "BEGIN IMMEDIATE", self._write,
            "UPDATE queue SET touched = ? WHERE id = ? AND consumer = ?",
            [(now, int(job.id), consumer) for job in jobs],
        )  # fmt: skip

    async def ack(self, job: Job) -> None:
        self._store._transaction(
            f"acknowledge the job of run {job.run_id!r}", "BEGIN IMMEDIATE", self._write,
            "DELETE FROM queue WHERE id = ?", [(int(job.id),)],
        )  # fmt: skip

    def _requeue(self, job: Job) -> None:
        self._add(job.agent, job.run_id, "run", "", None)
        self._db.execute("DELETE FROM queue WHERE id = ?", (int(job.id),))

    async def requeue(self, job: Job) -> None:
        self._store._transaction(
            f"requeue run {job.run_id!r}", "BEGIN IMMEDIATE", self._requeue, job
        )

    def _dead_letter(self, job: Job, reason: str) -> None:
        self._db.execute(
            "INSERT INTO dead_letters (agent, run_id, kind, reason, at) VALUES (?, ?, ?, ?, ?)",
            (job.agent, job.run_id, job.kind, reason, time.time()),
        )
        self._db.execute("DELETE FROM queue WHERE id = ?", (int(job.id),))

    async def dead_letter(self, job: Job, reason: str) -> None:
        self._store._transaction("park a job", "BEGIN IMMEDIATE", self._dead_letter, job, reason)

    def _count(self, agents: Sequence[str], claimed: bool) -> dict[str, int]:
        marks = ",".join("?" * len(agents))
        rows = self._db.execute(
            f"SELECT agent, count(*) FROM queue WHERE agent IN ({marks})"
            f" AND consumer {'!=' if claimed else '='} '' GROUP BY agent",
            tuple(agents),
        ).fetchall()
        counts = dict.fromkeys(agents, 0)
        counts.update({str(agent): int(n) for agent, n in rows})
        return counts

    async def pending(self, agents: Sequence[str]) -> dict[str, int]:
        found: dict[str, int] = self._store._transaction(
            "count pending jobs", "BEGIN", self._count, agents, True
        )
        return found

    async def waiting(self, agents: Sequence[str]) -> dict[str, int]:
        found: dict[str, int] = self._store._transaction(
            "count queued jobs", "BEGIN", self._count, agents, False
        )
        return found

    async def beat(self, beat: WorkerBeat) -> None:
        self._store._transaction(
            "heartbeat", "BEGIN IMMEDIATE", self._write,
            "INSERT INTO workers VALUES (?, ?)"
            " ON CONFLICT (name) DO UPDATE SET beat = excluded.beat",
            [(beat.name, dump_beat(beat))],
        )  # fmt: skip

    async def forget(self, name: str) -> None:
        self._store._transaction(
            "sign the worker off", "BEGIN IMMEDIATE", self._write,
            "DELETE FROM workers WHERE name = ?", [(name,)],
        )  # fmt: skip

    def _rows(self) -> list[tuple[Any, ...]]:
        return self._db.execute("SELECT name, beat FROM workers ORDER BY name").fetchall()

    async def workers(self) -> list[WorkerBeat]:
        rows = self._store._transaction("list workers", "BEGIN", self._rows)
        found = (load_beat(str(name), str(text)) for name, text in rows)
        return [beat for beat in found if beat is not None]

    async def prune(self, interval: float) -> list[str]:
        return await prune_silent(self, interval)
