"""The runner's protocol: one commit per transition, leases, durable attempt counting."""

from __future__ import annotations

import asyncio
import time

import pytest
from pydantic import BaseModel

from agents import Agent, tool
from statemachine import Run, RunLocked, StepContext
from storage import Store


class Count(BaseModel):
    n: int = 0
    attempts: list[int] = []


_hanging: set[str] = set()
"""Runs whose step `first` hangs in `work` now: the moment `die_during_step` kills it."""


def chain(
    *, retries: int = 0, lease_ttl: float = 0.3, hang_first: bool = False, crash_retries: int = 3
) -> Agent[Count]:
    async def work(m: Count, ctx: StepContext) -> Count:
        if hang_first and ctx.trigger == "first" and ctx.attempt == 1:
            _hanging.add(ctx.run_id)
            await asyncio.Event().wait()  # "the process dies here"
        return m.model_copy(update={"n": m.n + 1, "attempts": [*m.attempts, ctx.attempt]})

    return Agent(
        name="chain", memory=Count, initial="a", final=["c"], lease_ttl=lease_ttl,
        crash_retries=crash_retries,
        transitions=[
            tool("first", "a", "b", work, retries=retries),
            tool("second", "b", "c", work, retries=retries),
        ],
    )  # fmt: skip


async def die_during_step(run: Run[Count]) -> None:
    """Start a step and kill it mid-way the way SIGKILL would: no release, no more renewals."""
    task = asyncio.create_task(run.step())
    give_up = time.monotonic() + 60
    while run.run_id not in _hanging:  # the step has started (not a time: a busy store is slow)
        assert not task.done(), task
        assert time.monotonic() < give_up, "the step did not start within 60 s"
        await asyncio.sleep(0.005)
    _hanging.discard(run.run_id)
    assert run._keeper.lease is not None
    run._keeper.dropped()  # no more renewals, nothing given back
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_takeover_counts_an_attempt_for_the_step_in_flight_only(store: Store) -> None:
    agent = chain(retries=1, hang_first=True)
    first = await agent.start(store, Count(), run_id="r")
    await die_during_step(first)
    second = await agent.resume(store, "r", lease_wait=2)
    await second.until_done()
    assert second.status == "done"
    # 'first' ran as attempt 2 (the dead holder had attempt 1); 'second' is attempt 1 again.
    assert second.memory.attempts == [2, 1]
    history = await second.history()
    assert [(e.trigger, e.attempt) for e in history[1:]] == [("first", 2), ("second", 1)]


async def test_one_crash_does_not_use_up_a_step_without_retries(store: Store) -> None:
    agent = chain(retries=0, hang_first=True)
    first = await agent.start(store, Count(), run_id="r")
    await die_during_step(first)
    second = await agent.resume(store, "r", lease_wait=2)
    await second.until_done()
    assert (second.status, second.state, second.memory.attempts) == ("done", "c", [2, 1])


async def test_crashes_past_crash_retries_fail_the_run_apart_from_retries(store: Store) -> None:
    agent = chain(retries=5, hang_first=True, crash_retries=0)
    first = await agent.start(store, Count(), run_id="r")
    await die_during_step(first)
    second = await agent.resume(store, "r", lease_wait=2)
    await second.until_done()
    assert (second.status, second.state, second.memory.n) == ("failed", "a", 0)
    last = (await second.history())[-1]
    assert last.kind == "error" and last.error is not None and last.attempt == 1
    assert "cut short by its process dying 1 times (crash_retries=0)" in str(last.error["message"])


async def test_a_second_driver_in_the_same_process_is_locked_out(store: Store) -> None:
    agent = chain(lease_ttl=5)
    one = await agent.start(store, Count(), run_id="r")
    await one.step()
    two = await agent.resume(store, "r", lease_wait=0)
    with pytest.raises(RunLocked, match=f"held by '{one.owner}'"):
        await two.step()
    await one.until_done()
    await two.step()  # the lease is free again, and the run is done: nothing to do
    assert (two.status, two.seq) == ("done", 2)


async def test_each_transition_commits_once_with_a_deterministic_key(store: Store) -> None:
    agent = chain()
    run = await agent.start(store, Count(), run_id="keyed")
    await run.until_done()
    keys = [e.key for e in await run.history()]
    nonce = run.record.nonce
    assert len(nonce) == 16
    assert keys == [f"keyed:{nonce}:start", f"keyed:{nonce}:0:first", f"keyed:{nonce}:1:second"]
