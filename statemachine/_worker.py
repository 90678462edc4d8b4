"""`Worker`: drive the runs queued for some machines, many at once, in one asyncio process.

Workers are stateless: any number of them share one store (Redis, standalone or Cluster; or
one embedded file, on one machine) through its queue, `Store.queue`. A worker claims jobs (new
runs, runs handed back, events to deliver, timeouts due) up to its `concurrency`, drives each
run until it is done, failed or waiting, and only then acknowledges the job. Work held by a
worker that died is reclaimed by another after `reclaim_after` seconds of silence, and resumed
once the dead worker's lease expired; leases with fencing keep two workers from driving one
run at once.

Stopping (`stop()`, or SIGTERM/SIGINT in `agentfsm worker`): no new jobs are claimed, each run
in flight finishes the step it is in, its lease is released and its job handed back to the
queue for another worker; then the worker signs off.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from storage import Event, StorageError, Store
from storage.base import WorkerBeat
from storage.errors import CorruptData, StoreUnavailable

from .errors import (
    CommitsLost,
    InvalidPayload,
    NotDue,
    RunError,
    RunLocked,
    RunNotFound,
    RunTakenOver,
)

if TYPE_CHECKING:
    from storage.base import Job

    from ._machine import Machine
    from ._runner import Run

__all__ = ["Worker"]

log = logging.getLogger("agentfsm.worker")

CLAIM_BATCH = 64
"""Jobs claimed at most per read of the queue."""


class Worker:
    """Drives the queued runs of `machines` from `store`'s queue.

    Args:
        store: the store (its queue, `Store.queue`, lives beside the runs).
        machines: the machines (agents) this worker serves; each has its own queue.
        concurrency: how many runs it drives at once.
        name: how it shows in `agentfsm workers` (default host:pid:random).
        heartbeat: seconds between heartbeats (and between touches of the jobs it holds).
        reclaim_after: seconds of silence after which another worker's job is taken over
            (default: 3 heartbeats, at least 5 s).
        poll: seconds between looks for due wait timeouts.
        on_event: called with (run, event) after each commit (for progress output).
    """

    def __init__(
        self,
        store: Store,
        machines: Sequence[Machine[Any]],
        *,
        concurrency: int = 100,
        name: str | None = None,
        heartbeat: float = 2.0,
        reclaim_after: float | None = None,
        poll: float = 1.0,
        on_event: Callable[[Run[Any], Event], object] | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, not {concurrency}")
        if not machines:
            raise ValueError("give the worker at least one machine (agent) to serve")
        by_name: dict[str, Machine[Any]] = {}
        for m in machines:
            if m.name in by_name and by_name[m.name] is not m:
                raise ValueError(f"two machines are named {m.name!r}")
            by_name[m.name] = m
        self.store = store
        self.queue = store.queue
        self.machines = by_name
        self.concurrency = concurrency
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(2)}"
        self._named = name is not None
        """Runs it drives are held as "NAME/host:pid:random" (else as host:pid:random)."""
        self.heartbeat = heartbeat
        self.reclaim_after = reclaim_after or max(3 * heartbeat, 5.0)
        self.poll = poll
        self.on_event = on_event
        self.started_at = time.time()
        self.driven = 0
        """Jobs finished (acknowledged or handed back) since the start."""
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._jobs: dict[str, Job] = {}
        self._stopping: asyncio.Event | None = None
        self._queued_timeouts: dict[str, float] = {}
        self._holding: Counter[str] = Counter()
        """Jobs in flight per run id (a run's copies may be claimed while it is driven)."""
        self._down_since: float | None = None
        """When the store became unavailable (monotonic), while it is."""

    @property
    def holding(self) -> list[str]:
        """Ids of the runs this worker is driving now."""
        return sorted(self._holding)

    @property
    def stopping(self) -> bool:
        return self._stopping is not None and self._stopping.is_set()

    def stop(self) -> None:
        """Stop claiming; finish the steps in flight, hand their runs back, then return from
        `run()`. Safe to call from a signal handler on the worker's loop."""
        if self._stopping is None:
            self._stopping = asyncio.Event()
        self._stopping.set()

    async def run(self) -> None:
        """Claim and drive jobs until `stop()`.

        A store outage does not end it: it backs off (0.5 s doubling to 5 s), says so once
        when the store goes away and once when it is back, and goes on from its place in
        the queue. Only an error before the store was first reached (refused credentials,
        say) is raised, as that is the configuration, not an outage.
        """
        if self._stopping is None:
            self._stopping = asyncio.Event()
        agents = list(self.machines)
        ready = False
        pause = 0.0
        next_beat = next_reclaim = next_poll = 0.0
        try:
            while not self._stopping.is_set():
                try:
                    if not ready:
                        await self.queue.ensure_group(agents)
                        ready = True
                    now = time.monotonic()
                    if now >= next_beat:
                        await self._beat()
                        next_beat = now + self.heartbeat
                    if now >= next_poll:
                        await self._queue_due_timeouts()
                        next_poll = now + self.poll
                    free = self.concurrency - len(self._tasks)
                    if free <= 0:
                        await asyncio.wait(
                            list(self._tasks.values()),
                            timeout=0.1,
                            return_when=asyncio.FIRST_COMPLETED,
                        )
                        continue
                    jobs: list[Job] = []
                    if now >= next_reclaim:
                        jobs = await self.queue.reclaim(self.name, agents, self.reclaim_after, free)
                        next_reclaim = now + self.reclaim_after / 2
                    block = 0.05 if self._tasks else 0.25
                    # Claim in batches, so that workers started together share a long queue.
                    batch = min(free - len(jobs), CLAIM_BATCH)
                    jobs += await self.queue.claim(self.name, agents, batch, block)
                    for job in jobs:
                        if self.stopping:
                            # Claimed while stop() came: hand it on untouched. (It may be a
                            # run this worker is handing back right now: taking it for a copy
                            # of the job in hand, and dropping it, would lose the run.)
                            await self.queue.requeue(job)
                        elif job.id not in self._tasks:
                            self._start(job)
                except StorageError as exc:
                    if not ready and not isinstance(exc, StoreUnavailable):
                        log.error("worker %s: %s; stopping", self.name, exc)
                        raise
                    pause = self._store_down(exc, pause)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stopping.wait(), pause)
                    continue
                pause = self._store_up(pause)
        finally:
            self._stopping.set()
            if self._tasks:
                await asyncio.gather(*self._tasks.values(), return_exceptions=True)
            with contextlib.suppress(StorageError):
                await self.queue.forget(self.name)

    def _store_down(self, exc: StorageError, pause: float) -> float:
        """Log the outage when it starts; the next pause (0.5 s, doubling, at most 5 s)."""
        if self._down_since is None:
            self._down_since = time.monotonic()
            log.warning(
                "worker %s: the store is unavailable (%s); retrying with backoff until it is"
                " back", self.name, exc,
            )  # fmt: skip
        return min(max(pause * 2, 0.5), 5.0)

    def _store_up(self, pause: float) -> float:
        if self._down_since is not None:
            log.warning(
                "worker %s: the store is back after %.1f s; going on",
                self.name, time.monotonic() - self._down_since,
            )  # fmt: skip
            self._down_since = None
        return 0.0

    def _start(self, job: Job) -> None:
        log.debug("worker %s: job %s: %s %s", self.name, job.id, job.kind, job.run_id)
        if job.kind == "run" and job.run_id in self._holding:
            # A copy of a job for a run this worker drives already: that job is enough (it
            # ends by finishing the run, or leaves its own job pending; only a stopping
            # worker hands runs back, and a stopping worker starts nothing).
            log.debug("worker %s: job %s: a copy, dropped", self.name, job.id)
            task = asyncio.create_task(self.queue.ack(job))
            self._tasks[job.id] = task
            task.add_done_callback(lambda _: self._tasks.pop(job.id, None))
            return
        self._jobs[job.id] = job
        self._holding[job.run_id] += 1
        task = asyncio.create_task(self._drive(job), name=f"run:{job.run_id}")
        self._tasks[job.id] = task

        def done(_: asyncio.Task[None]) -> None:
            self._tasks.pop(job.id, None)
            self._jobs.pop(job.id, None)
            self._holding[job.run_id] -= 1
            if self._holding[job.run_id] <= 0:
                del self._holding[job.run_id]

        task.add_done_callback(done)

    async def _beat(self) -> None:
        """Heartbeat, and touch the jobs in flight so nobody reclaims them."""
        await self.queue.beat(
            WorkerBeat(
                name=self.name,
                host=socket.gethostname(),
                pid=os.getpid(),
                agents=tuple(self.machines),
                concurrency=self.concurrency,
                started_at=self.started_at,
                beat_at=time.time(),
                holding=tuple(self.holding),
                stopping=self.stopping,
            )
        )
        if self._jobs:
            await self.queue.touch(self.name, list(self._jobs.values()))

    async def _queue_due_timeouts(self) -> None:
        """Queue a "timeout" job for each due run of ours (firing happens in the job, so a
        crash between the two leaves nothing undone; duplicates cost a lookup)."""
        now = time.time()
        self._queued_timeouts = {r: t for r, t in self._queued_timeouts.items() if now - t < 30}
        for run_id in await self.store.due(now, limit=self.concurrency):
            if run_id in self._queued_timeouts:
                continue
            record = await self.store.load(run_id)
            if record is None or record.agent not in self.machines:
                continue
            await self.queue.enqueue(record.agent, run_id, "timeout")
            self._queued_timeouts[run_id] = now

    async def _drive(self, job: Job) -> None:
        machine = self.machines[job.agent]
        run: Run[Any] | None = None
        try:
            run = await machine.resume(
                self.store, job.run_id, lease_wait=machine.lease_ttl + self.heartbeat
            )
            if self._named:  # its holder (`agentfsm runs`) and its events name this worker
                run.owner = f"{self.name}/{run.owner}"
            if job.kind == "timeout":
                with contextlib.suppress(NotDue):  # the event came first, or it was fired
                    await run.fire_timeout()
            undelivered = job.kind == "event"
            event: Event | None
            while not self.stopping:
                if undelivered and run.status == "waiting":
                    try:
                        event = await run.send(job.event, job.payload)
                    except (RunError, InvalidPayload, ValueError) as exc:
                        await run.release(quiet=True)
                        await self.queue.dead_letter(job, f"{type(exc).__name__}: {exc}")
                        return
                    undelivered = False
                elif run.status == "running":
                    event = await run.step()
                else:
                    break
                if event is not None and self.on_event is not None:
                    self.on_event(run, event)
            if undelivered and run.status in ("done", "failed", "cancelled"):
                await run.release(quiet=True)
                await self.queue.dead_letter(
                    job, f"the run ended ({run.status}) before event {job.event!r} came"
                )
                return
            await run.release(quiet=True)
            log.debug(
                "worker %s: job %s: run %s %s at seq %s", self.name, job.id, run.run_id,
                run.status, run.seq,
            )  # fmt: skip
            if run.status == "running":  # stopping: hand it to another worker now
                await self.queue.requeue(job)
            else:
                await self.queue.ack(job)
            self.driven += 1
        except RunNotFound:
            await self.queue.dead_letter(job, f"no run {job.run_id!r} in the store")
        except CommitsLost as exc:  # the run is resumable from what the store kept: drive it on
            log.error("worker %s: %s", self.name, exc)
            with contextlib.suppress(StorageError):
                await self.queue.requeue(job)
        except (RunLocked, RunTakenOver) as exc:
            # Another worker drives it: leave the job pending. If that worker dies, the job is
            # reclaimed; if it finishes, the job is acknowledged when next met.
            log.info("worker %s: run %s: %s", self.name, job.run_id, exc)
        except CorruptData as exc:  # no retry can help: park it, naming the key
            log.error("worker %s: run %s: %s", self.name, job.run_id, exc)
            with contextlib.suppress(StorageError):
                await self.queue.dead_letter(job, f"{type(exc).__name__}: {exc}")
        except StorageError as exc:
            # The job stays pending, and is reclaimed when the store is back.
            level = logging.DEBUG if self._down_since is not None else logging.WARNING
            log.log(
                level, "worker %s: run %s: %s (the job stays queued)", self.name, job.run_id, exc
            )
        except Exception as exc:  # the run cannot go on (bad table, stored data, a bug)
            log.error("worker %s: run %s: %s", self.name, job.run_id, exc)
            with contextlib.suppress(StorageError):
                await self.queue.dead_letter(job, f"{type(exc).__name__}: {exc}")
        finally:
            if run is not None:
                await run.release(quiet=True)
