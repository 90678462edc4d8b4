"""The run queue in the Postgres store (`storage.base.RunQueue`): table `jobs`, one row per
job (its number is its id; `consumer` is "" until a worker claims it, `touched` when its
worker last said it was alive, on the server's clock). A claim takes the oldest unclaimed
rows `FOR UPDATE SKIP LOCKED`, so workers never wait for each other nor claim one job twice;
a waiting claim LISTENs for the enqueuers' NOTIFY (`live.wait_for`)."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from pydantic import JsonValue

from .._capabilities import Job, JobKind, WorkerBeat, dump_beat, load_beat, prune_silent
from ._connections import Connections
from .live import wait_for

__all__ = ["PostgresQueue"]

_RETURNING = "RETURNING id, agent, run_id, kind, event, payload"


def _job(row: Any) -> Job:
    kind = row["kind"]
    return Job(
        id=str(row["id"]), agent=row["agent"], run_id=row["run_id"],
        kind=kind if kind in ("run", "event", "timeout") else "run",
        event=row["event"], payload=json.loads(row["payload"]),
    )  # fmt: skip


class PostgresQueue:
    def __init__(self, db: Connections, schema: str, channel: str) -> None:
        self._db = db
        self._s = schema
        self._channel = channel

    async def ensure_group(self, agents: Sequence[str]) -> None:
        """Nothing to make: every agent's jobs are rows of one table."""

    async def enqueue(
        self,
        agent: str,
        run_id: str,
        kind: JobKind = "run",
        *,
        event: str = "",
        payload: JsonValue = None,
    ) -> str:
        body = json.dumps(payload if kind == "event" else None)
        job_id = await self._db.call(
            f"enqueue run {run_id!r}",
            lambda c: c.fetchval(
                f"WITH j AS (INSERT INTO {self._s}.jobs (agent, run_id, kind, event, payload)"
                " VALUES ($1, $2, $3, $4, $5) RETURNING id)"
                " SELECT j.id FROM j, pg_notify($6, $1)",
                agent, run_id, kind, event, body, self._channel,
            ),
        )  # fmt: skip
        return str(job_id)

    async def _take(
        self, consumer: str, agents: Sequence[str], count: int, idle: float | None
    ) -> list[Job]:
        s = self._s
        which = (
            "consumer = ''" if idle is None else f"consumer <> '' AND touched <= {s}.clock() - $4"
        )
        sql = (
            f"UPDATE {s}.jobs SET consumer = $1, touched = {s}.clock() WHERE id IN (SELECT id"
            f" FROM {s}.jobs WHERE agent = ANY ($2::text[]) AND {which} ORDER BY id LIMIT $3"
            f" FOR UPDATE SKIP LOCKED) {_RETURNING}"
        )
        args: tuple[Any, ...] = (consumer, list(agents), count)
        if idle is not None:
            args = (*args, idle)
        rows = await self._db.call("claim jobs", lambda c: c.fetch(sql, *args))
        return [_job(r) for r in sorted(rows, key=lambda r: r["id"])]

    async def claim(
        self, consumer: str, agents: Sequence[str], count: int, block: float
    ) -> list[Job]:
        if count <= 0 or not agents:
            return []

        async def fetch() -> list[Job]:
            return await self._take(consumer, agents, count, None)

        return await wait_for(self._db, self._channel, fetch, block)

    async def reclaim(
        self, consumer: str, agents: Sequence[str], idle: float, count: int
    ) -> list[Job]:
        if count <= 0 or not agents:
            return []
        return await self._take(consumer, agents, count, idle)

    async def touch(self, consumer: str, jobs: Sequence[Job]) -> None:
        await self._db.call(
            "touch jobs",
            lambda c: c.execute(
                f"UPDATE {self._s}.jobs SET touched = {self._s}.clock()"
                " WHERE id = ANY ($1::bigint[]) AND consumer = $2",
                [int(j.id) for j in jobs], consumer,
            ),
        )  # fmt: skip

    async def ack(self, job: Job) -> None:
        await self._db.call(
            f"acknowledge the job of run {job.run_id!r}",
            lambda c: c.execute(f"DELETE FROM {self._s}.jobs WHERE id = $1", int(job.id)),
        )

    async def requeue(self, job: Job) -> None:
        s = self._s
        await self._db.call(
            f"requeue run {job.run_id!r}",
            lambda c: c.execute(
                f"WITH gone AS (DELETE FROM {s}.jobs WHERE id = $1),"
                f" j AS (INSERT INTO {s}.jobs (agent, run_id, kind, event, payload)"
                " VALUES ($2, $3, 'run', '', 'null') RETURNING id)"
                " SELECT j.id FROM j, pg_notify($4, $2)",
                int(job.id), job.agent, job.run_id, self._channel,
            ),
        )  # fmt: skip

    async def dead_letter(self, job: Job, reason: str) -> None:
        s = self._s
        await self._db.call(
            "park a job",
            lambda c: c.execute(
                f"WITH gone AS (DELETE FROM {s}.jobs WHERE id = $1)"
                f" INSERT INTO {s}.dead_letters (agent, run_id, kind, reason, at)"
                " VALUES ($2, $3, $4, $5, $6)",
                int(job.id), job.agent, job.run_id, job.kind, reason, time.time(),
            ),
        )  # fmt: skip

    async def _count(self, agents: Sequence[str], claimed: bool) -> dict[str, int]:
        rows = await self._db.call(
            "count jobs",
            lambda c: c.fetch(
                f"SELECT agent, count(*) AS n FROM {self._s}.jobs WHERE agent = ANY ($1::text[])"
                f" AND consumer {'<>' if claimed else '='} '' GROUP BY agent",
                list(agents),
            ),
        )  # fmt: skip
        counts = dict.fromkeys(agents, 0)
        counts.update({str(r["agent"]): int(r["n"]) for r in rows})
        return counts

    async def pending(self, agents: Sequence[str]) -> dict[str, int]:
        return await self._count(agents, True)

    async def waiting(self, agents: Sequence[str]) -> dict[str, int]:
        return await self._count(agents, False)

    async def beat(self, beat: WorkerBeat) -> None:
        await self._db.call(
            "heartbeat",
            lambda c: c.execute(
                f"INSERT INTO {self._s}.workers VALUES ($1, $2)"
                " ON CONFLICT (name) DO UPDATE SET beat = excluded.beat",
                beat.name, dump_beat(beat),
            ),
        )  # fmt: skip

    async def forget(self, name: str) -> None:
        await self._db.call(
            "sign the worker off",
            lambda c: c.execute(f"DELETE FROM {self._s}.workers WHERE name = $1", name),
        )

    async def workers(self) -> list[WorkerBeat]:
        rows = await self._db.call(
            "list workers",
            lambda c: c.fetch(f"SELECT name, beat FROM {self._s}.workers ORDER BY name"),
        )
        found = (load_beat(str(r["name"]), str(r["beat"])) for r in rows)
        return [b for b in found if b is not None]

    async def prune(self, interval: float) -> list[str]:
        return await prune_silent(self, interval)
