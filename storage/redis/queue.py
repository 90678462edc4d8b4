"""`RedisQueue`: the run queue (`storage.base.RunQueue`) in Redis Streams, shared by all workers.

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
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pydantic import JsonValue
from redis.exceptions import ResponseError

from .._capabilities import Job, JobKind, WorkerBeat, dump_beat, load_beat, prune_silent
from ._errors import talking

if TYPE_CHECKING:
    from ._base import RedisBase

__all__ = ["RedisQueue"]

GROUP = "workers"
_LEGACY_CLASHES = frozenset({"dead", "run", "events", "keys", "lease"})
"""Agent names whose streams an older agentfsm shared with other keys: not renamed."""


class RedisQueue:
    """The queue of runs to drive, on the Redis of `store` (standalone or Cluster)."""

    def __init__(self, store: RedisBase) -> None:
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
    def _client(self) -> Any:
        return self._store.client  # the client of the running event loop

    async def ensure_group(self, agents: Sequence[str]) -> None:
        """Create the consumer group on each agent's stream (and the stream), if missing."""
        for agent in agents:
            if agent in self._groups:
                continue
            key = self.stream(agent)

            old = f"{self._prefix}:{{queue}}:{agent}"
            legacy = agent not in _LEGACY_CLASHES

            async with talking(self._store, f"create the queue of {agent!r}"):
                if legacy and await self._client.type(old) == "stream":
                    await self._client.renamenx(old, key)  # an older agentfsm's stream
                try:
                    await self._client.xgroup_create(key, GROUP, id="0", mkstream=True)
                except ResponseError as exc:
                    if "BUSYGROUP" not in str(exc):  # the group exists: fine
                        raise
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
        async with talking(self._store, f"enqueue run {run_id!r}"):
            entry: str = await self._client.xadd(self.stream(agent), fields)
        return entry

    async def claim(
        self, consumer: str, agents: Sequence[str], count: int, block: float
    ) -> list[Job]:
        """New jobs for `consumer`, waiting up to `block` seconds for one to come."""
        if count <= 0:
            return []
        streams: dict[Any, Any] = {self.stream(a): ">" for a in agents}
        async with talking(self._store, "claim jobs"):
            reply = await self._client.xreadgroup(
                GROUP, consumer, streams, count=count, block=max(int(block * 1000), 1)
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
            async with talking(self._store, "reclaim jobs"):
                reply = await self._client.xautoclaim(
                    key, GROUP, consumer, int(idle * 1000), "0-0", count=n
                )
            jobs += self._jobs(key, reply[1])
        return jobs

    async def touch(self, consumer: str, jobs: Sequence[Job]) -> None:
        """Tell the group these jobs are alive (resets their idle time)."""
        by_stream: dict[str, list[str]] = {}
        for job in jobs:
            by_stream.setdefault(self.stream(job.agent), []).append(job.id)
        for key, ids in by_stream.items():
            async with talking(self._store, "touch jobs"):
                await self._client.xclaim(key, GROUP, consumer, 0, ids, justid=True)

    async def ack(self, job: Job) -> None:
        """The job is done with: drop it."""
        key = self.stream(job.agent)

        async with talking(self._store, f"acknowledge the job of run {job.run_id!r}"):
            pipe = self._client.pipeline(transaction=False)  # one round trip, one key
            pipe.xack(key, GROUP, job.id)
            pipe.xdel(key, job.id)
            await pipe.execute()

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
        async with talking(self._store, "park a job"):
            await self._client.xadd(self.dead_letters, fields)
        await self.ack(job)

    async def pending(self, agents: Sequence[str]) -> dict[str, int]:
        """Jobs claimed and not yet acknowledged, by agent."""
        counts: dict[str, int] = {}
        for agent in agents:
            await self.ensure_group([agent])
            key = self.stream(agent)
            async with talking(self._store, "count pending jobs"):
                info = await self._client.xpending(key, GROUP)
            counts[agent] = int(info["pending"])
        return counts

    async def waiting(self, agents: Sequence[str]) -> dict[str, int]:
        """Jobs not claimed yet, by agent."""
        counts: dict[str, int] = {}
        for agent in agents:
            await self.ensure_group([agent])
            key = self.stream(agent)
            async with talking(self._store, "count queued jobs"):
                groups = await self._client.xinfo_groups(key)
            lag = next((g.get("lag") for g in groups if g.get("name") == GROUP), None)
            counts[agent] = int(lag or 0)
        return counts

    async def beat(self, beat: WorkerBeat) -> None:
        async with talking(self._store, "heartbeat"):
            await self._client.hset(self._workers, beat.name, dump_beat(beat))

    async def forget(self, name: str) -> None:
        async with talking(self._store, "sign the worker off"):
            await self._client.hdel(self._workers, name)

    async def workers(self) -> list[WorkerBeat]:
        async with talking(self._store, "list workers"):
            raw: Mapping[str, str] = await self._client.hgetall(self._workers)
        found = (load_beat(name, text) for name, text in sorted(raw.items()))
        return [beat for beat in found if beat is not None]

    async def prune(self, interval: float) -> list[str]:
        return await prune_silent(self, interval)

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
