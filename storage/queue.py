"""`RunQueue`: the work queue of runs to drive, in Redis Streams, shared by all workers.

One stream per agent, `{prefix}:{queue}:q:<agent>` (the `{queue}` hash tag puts every queue
stream in one Cluster slot, so a worker reads all of its agents' streams in one
`XREADGROUP`), read through one consumer group, "workers". The dead letters are
`{prefix}:{queue}:dead`, which no agent's stream can be (an agent named "dead" has
`{prefix}:{queue}:q:dead`); a stream's agent is what follows `:q:`, colons and all.
Streams of an older agentfsm (`{prefix}:{queue}:<agent>`) are renamed when first used.
An entry names a run and what to do with it: drive it ("run"), deliver an event first
("event"), or fire its due timeout ("timeout").

Delivery is at least once; exactly-once *execution* comes from the runs themselves (leases
with fencing, idempotency keys), so an entry seen twice costs a lookup, never a step run twice:

- a worker acknowledges an entry only when the run no longer needs driving (done, failed,
  waiting, cancelled), or when it hands the run back (`requeue`);
- while it drives a run it `touch`es the entry, resetting its idle time;
- an entry idle longer than `reclaim_after` belonged to a worker that died: any worker takes
  it over with `XAUTOCLAIM` (`reclaim`), and resumes the run once the dead one's lease expired.

Workers announce themselves in the hash `{prefix}:workers` (name -> JSON heartbeat).
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import JsonValue
from redis.exceptions import ResponseError

from .redis import Client, RedisStore

__all__ = ["Job", "RunQueue", "WorkerBeat"]

GROUP = "workers"
_LEGACY_CLASHES = frozenset({"dead", "run", "events", "keys", "lease"})
"""Agent names whose streams an older agentfsm shared with other keys: not renamed."""
JobKind = Literal["run", "event", "timeout"]


@dataclass(frozen=True, kw_only=True, slots=True)
class Job:
    """One queue entry: drive run `run_id` of `agent` (after delivering `event`, or firing a
    due timeout, for those kinds)."""

    id: str
    agent: str
    run_id: str
    kind: JobKind = "run"
    event: str = ""
    payload: JsonValue = None


@dataclass(frozen=True, kw_only=True, slots=True)
class WorkerBeat:
    """What a worker last said about itself."""

    name: str
    host: str
    pid: int
    agents: tuple[str, ...]
    concurrency: int
    started_at: float
    beat_at: float
    holding: tuple[str, ...]
    """Run ids it is driving."""
    stopping: bool = False

    def alive(self, now: float, interval: float) -> bool:
        return now - self.beat_at < 3 * interval


class RunQueue:
    """The queue of runs to drive, on the Redis of `store` (standalone or Cluster)."""

    def __init__(self, store: RedisStore) -> None:
        self._store = store
        self._prefix = store.prefix
        self._groups: set[str] = set()

    def stream(self, agent: str) -> str:
        return f"{self._streams}{agent}"

    @property
    def _streams(self) -> str:
        """What every agent's stream name starts with; the agent's name follows."""
        return f"{self._prefix}:{{queue}}:q:"

    @property
    def dead_letters(self) -> str:
        """Entries a worker could not drive (the run cannot go on), with the reason."""
        return f"{self._prefix}:{{queue}}:dead"

    @property
    def _workers(self) -> str:
        return f"{self._prefix}:workers"

    @property
    def _client(self) -> Client:
        return self._store.client  # the client of the running event loop

    async def _call(self, what: str, op: Callable[[], Awaitable[Any]]) -> Any:
        return await self._store._call(what, op)

    async def ensure_group(self, agents: Sequence[str]) -> None:
        """Create the consumer group on each agent's stream (and the stream), if missing."""
        for agent in agents:
            if agent in self._groups:
                continue
            key = self.stream(agent)

            old = f"{self._prefix}:{{queue}}:{agent}"
            legacy = agent not in _LEGACY_CLASHES

            async def create(key: str = key, old: str = old, legacy: bool = legacy) -> None:
                if legacy and await self._client.type(old) == "stream":
                    await self._client.renamenx(old, key)  # an older agentfsm's stream
                try:
                    await self._client.xgroup_create(key, GROUP, id="0", mkstream=True)
                except ResponseError as exc:
                    if "BUSYGROUP" not in str(exc):  # the group exists: fine
                        raise

            await self._call(f"create the queue of {agent!r}", create)
            self._groups.add(agent)

    async def enqueue(
        self,
        agent: str,
        run_id: str,
        kind: JobKind = "run",
        *,
        event: str = "",
        payload: JsonValue = None,
    ) -> str:
        """Add a job; returns its entry id."""
        await self.ensure_group([agent])
        fields: dict[Any, Any] = {"run": run_id, "kind": kind}
        if kind == "event":
            fields |= {"event": event, "payload": json.dumps(payload)}
        entry: str = await self._call(
            f"enqueue run {run_id!r}", lambda: self._client.xadd(self.stream(agent), fields)
        )
        return entry

    async def claim(
        self, consumer: str, agents: Sequence[str], count: int, block: float
    ) -> list[Job]:
        """New jobs for `consumer`, waiting up to `block` seconds for one to come."""
        if count <= 0:
            return []
        streams: dict[Any, Any] = {self.stream(a): ">" for a in agents}
        reply = await self._call(
            "claim jobs",
            lambda: self._client.xreadgroup(
                GROUP, consumer, streams, count=count, block=max(int(block * 1000), 1)
            ),
        )
        return [
            job for stream, entries in _stream_entries(reply) for job in self._jobs(stream, entries)
        ]

    async def reclaim(
        self, consumer: str, agents: Sequence[str], idle: float, count: int
    ) -> list[Job]:
        """Jobs whose worker stopped touching them `idle` seconds ago: it died."""
        jobs: list[Job] = []
        for agent in agents:
            if len(jobs) >= count:
                break
            key, n = self.stream(agent), count - len(jobs)
            reply = await self._call(
                "reclaim jobs",
                lambda k=key, n=n: self._client.xautoclaim(  # type: ignore[misc]
                    k, GROUP, consumer, int(idle * 1000), "0-0", count=n
                ),
            )
            jobs += self._jobs(key, reply[1])
        return jobs

    async def touch(self, consumer: str, jobs: Sequence[Job]) -> None:
        """Tell the group these jobs are alive (resets their idle time)."""
        by_stream: dict[str, list[str]] = {}
        for job in jobs:
            by_stream.setdefault(self.stream(job.agent), []).append(job.id)
        for key, ids in by_stream.items():
            await self._call(
                "touch jobs",
                lambda k=key, i=ids: self._client.xclaim(  # type: ignore[misc]
                    k, GROUP, consumer, 0, i, justid=True
                ),
            )

    async def ack(self, job: Job) -> None:
        """The job is done with: drop it."""
        key = self.stream(job.agent)

        async def ack_and_delete() -> None:
            pipe = self._client.pipeline(transaction=False)  # one round trip, one key
            pipe.xack(key, GROUP, job.id)
            pipe.xdel(key, job.id)
            await pipe.execute()

        await self._call(f"acknowledge the job of run {job.run_id!r}", ack_and_delete)

    async def requeue(self, job: Job) -> None:
        """Hand a run back to the queue for another worker (a graceful stop)."""
        await self.enqueue(job.agent, job.run_id)
        await self.ack(job)

    async def dead_letter(self, job: Job, reason: str) -> None:
        """Park a job no worker can carry out, with why, and drop it from its queue."""
        fields: dict[Any, Any] = {
            "agent": job.agent,
            "run": job.run_id,
            "kind": job.kind,
            "reason": reason,
        }
        await self._call("park a job", lambda: self._client.xadd(self.dead_letters, fields))
        await self.ack(job)

    async def pending(self, agents: Sequence[str]) -> dict[str, int]:
        """Jobs claimed and not yet acknowledged, by agent."""
        counts: dict[str, int] = {}
        for agent in agents:
            await self.ensure_group([agent])
            key = self.stream(agent)
            info = await self._call(
                "count pending jobs",
                lambda k=key: self._client.xpending(k, GROUP),  # type: ignore[misc]
            )
            counts[agent] = int(info["pending"])
        return counts

    async def waiting(self, agents: Sequence[str]) -> dict[str, int]:
        """Jobs not claimed yet, by agent."""
        counts: dict[str, int] = {}
        for agent in agents:
            await self.ensure_group([agent])
            key = self.stream(agent)
            groups = await self._call(
                "count queued jobs",
                lambda k=key: self._client.xinfo_groups(k),  # type: ignore[misc]
            )
            lag = next((g.get("lag") for g in groups if g.get("name") == GROUP), None)
            counts[agent] = int(lag or 0)
        return counts

    async def beat(self, beat: WorkerBeat) -> None:
        data = json.dumps(
            {
                "host": beat.host,
                "pid": beat.pid,
                "agents": list(beat.agents),
                "concurrency": beat.concurrency,
                "started_at": beat.started_at,
                "beat_at": beat.beat_at,
                "holding": list(beat.holding),
                "stopping": beat.stopping,
            }
        )
        await self._call("heartbeat", lambda: self._client.hset(self._workers, beat.name, data))

    async def forget(self, name: str) -> None:
        await self._call("sign the worker off", lambda: self._client.hdel(self._workers, name))

    async def workers(self) -> list[WorkerBeat]:
        raw: Mapping[str, str] = await self._call(
            "list workers", lambda: self._client.hgetall(self._workers)
        )
        beats = []
        for name, text in sorted(raw.items()):
            try:
                d = json.loads(text)
                beats.append(
                    WorkerBeat(
                        name=name,
                        host=str(d["host"]),
                        pid=int(d["pid"]),
                        agents=tuple(d["agents"]),
                        concurrency=int(d["concurrency"]),
                        started_at=float(d["started_at"]),
                        beat_at=float(d["beat_at"]),
                        holding=tuple(d["holding"]),
                        stopping=bool(d.get("stopping", False)),
                    )
                )
            except (ValueError, KeyError, TypeError):
                continue  # not ours to judge: skip what we cannot read
        return beats

    async def prune(self, interval: float) -> list[str]:
        """Drop the heartbeats of workers silent for more than 30 intervals."""
        now = time.time()
        gone = [b.name for b in await self.workers() if now - b.beat_at > 30 * interval]
        for name in gone:
            await self.forget(name)
        return gone

    def _jobs(self, stream: str, entries: Any) -> list[Job]:
        agent = stream.removeprefix(self._streams)
        jobs = []
        for entry_id, fields in entries or []:
            if not fields:  # deleted meanwhile
                continue
            kind = fields.get("kind", "run")
            payload: JsonValue = None
            if kind == "event":
                payload = json.loads(fields.get("payload", "null"))
            jobs.append(
                Job(
                    id=entry_id,
                    agent=agent,
                    run_id=fields.get("run", ""),
                    kind=kind if kind in ("run", "event", "timeout") else "run",
                    event=fields.get("event", ""),
                    payload=payload,
                )
            )
        return jobs


def _stream_entries(reply: Any) -> list[tuple[str, Any]]:
    """XREADGROUP's reply as (stream, entries) pairs (RESP2 list or RESP3 dict)."""
    if not reply:
        return []
    if isinstance(reply, dict):
        return [(str(k), v[0] if v and isinstance(v[0], list) else v) for k, v in reply.items()]
    return [(str(stream), entries) for stream, entries in reply]
