"""The run queue (`Store.queue`) on every backend: at-least-once jobs, claimed by one worker
at a time, reclaimed from a worker that went silent, dead letters, heartbeats."""

from __future__ import annotations

import asyncio
import dataclasses
import time

from storage import Store
from storage.base import WorkerBeat


async def test_a_job_is_claimed_by_one_consumer_and_gone_once_acknowledged(store: Store) -> None:
    queue = store.queue
    await queue.ensure_group(["a", "b"])
    first = await queue.enqueue("a", "r1")
    await queue.enqueue("b", "r2", "event", event="approved", payload={"by": "ana"})
    assert await queue.waiting(["a", "b"]) == {"a": 1, "b": 1}
    jobs = await queue.claim("w1", ["a", "b"], 10, 0.01)
    assert sorted((j.agent, j.run_id, j.kind) for j in jobs) == [
        ("a", "r1", "run"),
        ("b", "r2", "event"),
    ]
    assert next(j for j in jobs if j.agent == "a").id == first
    assert next(j for j in jobs if j.agent == "b").payload == {"by": "ana"}
    assert await queue.claim("w2", ["a", "b"], 10, 0.01) == []  # nobody claims them twice
    assert await queue.pending(["a", "b"]) == {"a": 1, "b": 1}
    for job in jobs:
        await queue.ack(job)
    assert await queue.pending(["a", "b"]) == {"a": 0, "b": 0}
    assert await queue.waiting(["a", "b"]) == {"a": 0, "b": 0}


async def test_a_waiting_claim_gets_a_job_enqueued_meanwhile(store: Store) -> None:
    queue = store.queue
    await queue.ensure_group(["a"])

    async def later() -> None:
        await asyncio.sleep(0.05)
        await queue.enqueue("a", "late")

    task = asyncio.create_task(later())
    jobs = await queue.claim("w1", ["a"], 1, 5.0)
    await task
    assert [j.run_id for j in jobs] == ["late"]


async def test_a_silent_workers_jobs_are_reclaimed_and_a_touched_one_is_not(store: Store) -> None:
    queue = store.queue
    await queue.ensure_group(["a"])
    await queue.enqueue("a", "r1")
    await queue.enqueue("a", "r2")
    silent, alive = await queue.claim("dead", ["a"], 2, 0.01)
    await asyncio.sleep(1.2)  # both jobs idle past the 1 s below
    await queue.touch("dead", [alive])  # its worker still speaks for this one
    taken = await queue.reclaim("w2", ["a"], 1.0, 10)  # a busy machine may pause 1 s here
    assert [j.run_id for j in taken] == [silent.run_id]
    await queue.requeue(taken[0])  # handed back: a new job, claimable again
    again = await queue.claim("w3", ["a"], 10, 0.01)
    assert [j.run_id for j in again] == [silent.run_id]


async def test_a_dead_letter_leaves_the_queue(store: Store) -> None:
    queue = store.queue
    await queue.ensure_group(["a"])
    await queue.enqueue("a", "ghost")
    [job] = await queue.claim("w1", ["a"], 1, 0.01)
    await queue.dead_letter(job, "no run 'ghost' in the store")
    assert await queue.pending(["a"]) == {"a": 0}
    assert await queue.waiting(["a"]) == {"a": 0}


async def test_heartbeats_are_listed_and_pruned(store: Store) -> None:
    queue = store.queue
    now = time.time()
    beat = WorkerBeat(
        name="w1", host="h", pid=1, agents=("a",), concurrency=3, started_at=now,
        beat_at=now, holding=("r1",),
    )  # fmt: skip
    await queue.beat(beat)
    await queue.beat(dataclasses.replace(beat, name="old", beat_at=now - 1000))
    assert [b.name for b in await queue.workers()] == ["old", "w1"]
    assert (await queue.workers())[1] == beat
    assert await queue.prune(1.0) == ["old"]
    await queue.forget("w1")
    assert await queue.workers() == []
