"""Control flow beyond straight lines: waiting for events, routes, loops with a limit."""

from __future__ import annotations

import asyncio
from typing import Literal

import pytest
from pydantic import BaseModel

from agents import Agent, tool, wait
from statemachine import DefinitionError, RunError
from statemachine.errors import InvalidPayload
from storage import Store


class Decision(BaseModel):
    verdict: Literal["approve", "revise"]
    by: str


class Draft(BaseModel):
    text: str = ""
    decision: Decision | None = None
    revisions: int = 0


def write(m: Draft) -> str:
    return f"draft #{m.revisions}"


def revise(m: Draft) -> int:
    return m.revisions + 1


def approval(max_revisions: int = 5) -> Agent[Draft]:
    return Agent(
        name="approval", memory=Draft, initial="new", final=["sent"], on_error="failed",
        lease_ttl=2,
        transitions=[
            tool("write", "new", "review", write, into="text"),
            wait("decide", "review", "decided", payload=Decision, into="decision"),
            tool("send", "decided", "sent", write, into="text",
                 guard=lambda m: m.decision is not None and m.decision.verdict == "approve"),
            tool("revise", "decided", "new", revise, into="revisions", max_visits=max_revisions),
        ],
    )  # fmt: skip


async def test_a_run_parks_at_a_wait_and_goes_on_when_the_event_comes(store: Store) -> None:
    agent = approval()
    run = await agent.start(store, Draft(), run_id="a1")
    await run.until_done()
    assert (run.state, run.status) == ("review", "waiting")
    stored = await store.load("a1")
    assert stored is not None and (stored.status, stored.holder) == ("waiting", "")  # nothing held

    other_process = await agent.resume(store, "a1")
    await other_process.send("decide", {"verdict": "approve", "by": "alice"})
    await other_process.until_done()
    assert (other_process.status, other_process.memory.decision) == (
        "done",
        Decision(verdict="approve", by="alice"),
    )
    sent = [e for e in await other_process.history() if e.trigger == "decide"]
    assert [(e.kind, e.patch) for e in sent] == [
        ("wait", {"decision": {"verdict": "approve", "by": "alice"}})
    ]


async def test_a_bad_payload_or_an_unexpected_event_is_refused_and_changes_nothing(
    store: Store,
) -> None:
    agent = approval()
    run = await agent.start(store, Draft(), run_id="a2")
    await run.until_done()
    before = (await store.load("a2"), await store.history("a2"))
    with pytest.raises(InvalidPayload, match="payload of event 'decide' fails its schema: verdict"):
        await run.send("decide", {"verdict": "maybe", "by": "bob"})
    with pytest.raises(RunError, match=r"does not accept event 'ship'.*waits for \['decide'\]"):
        await run.send("ship", None)
    await run.release()
    after = await store.load("a2")
    assert before[0] is not None and after is not None
    assert (after.seq, after.memory, await store.history("a2")) == (
        before[0].seq,
        before[0].memory,
        before[1],
    )


async def test_a_refused_event_leaves_the_run_free_for_the_next_sender(store: Store) -> None:
    agent = approval()
    run = await agent.start(store, Draft(), run_id="a7")
    await run.until_done()
    careless = await agent.resume(store, "a7")
    with pytest.raises(InvalidPayload):
        await careless.send("decide", {"verdict": "maybe"})
    # no release by the careless sender: the refusal must not have kept the lease
    careful = await agent.resume(store, "a7")
    await careful.send("decide", {"verdict": "approve", "by": "ana"})
    await careful.until_done()
    assert careful.status == "done"
    decide = [e for e in await careful.history() if e.trigger == "decide"]
    assert [(e.kind, e.attempt) for e in decide] == [("wait", 1)]


async def test_an_event_for_a_run_that_is_not_waiting_is_refused(store: Store) -> None:
    agent = approval()
    run = await agent.start(store, Draft(), run_id="a3")
    with pytest.raises(RunError, match="it is running in state 'new' and is not waiting"):
        await run.send("decide", {"verdict": "approve", "by": "x"})
    await run.release()


async def test_two_senders_of_the_same_event_commit_it_once(store: Store) -> None:
    agent = approval()
    run = await agent.start(store, Draft(), run_id="a4")
    await run.until_done()
    senders = [await agent.resume(store, "a4", lease_wait=5) for _ in range(2)]

    async def send(i: int) -> str:
        try:
            await senders[i].send("decide", {"verdict": "approve", "by": f"p{i}"})
            return "sent"
        except RunError:
            return "refused"
        finally:
            await senders[i].release()

    outcomes = await asyncio.gather(send(0), send(1))
    assert sorted(outcomes) == ["refused", "sent"]
    assert [e.trigger for e in await store.history("a4")].count("decide") == 1


async def test_a_loop_past_max_visits_goes_to_the_failure_state(store: Store) -> None:
    agent = approval(max_revisions=2)
    run = await agent.start(store, Draft(), run_id="a5")
    await run.until_done()
    for _ in range(3):
        await run.send("decide", {"verdict": "revise", "by": "carol"})
        await run.until_done()
    assert (run.state, run.status, run.memory.revisions) == ("failed", "failed", 2)
    last = (await run.history())[-1]
    assert last.error is not None
    assert last.error["message"] == "transition 'revise' reached its limit of 2 visits"


async def test_visit_counts_survive_a_resume(store: Store) -> None:
    agent = approval(max_revisions=1)
    run = await agent.start(store, Draft(), run_id="a6")
    await run.until_done()
    await run.send("decide", {"verdict": "revise", "by": "d"})
    await run.until_done()
    fresh = await agent.resume(store, "a6")
    await fresh.send("decide", {"verdict": "revise", "by": "d"})
    await fresh.until_done()
    assert (fresh.state, fresh.memory.revisions) == ("failed", 1)


async def test_a_tool_route_picks_the_destination(store: Store) -> None:
    class Doc(BaseModel):
        score: int

    def triage(m: Doc) -> str:
        return "good" if m.score > 5 else "bad"

    agent = Agent(
        name="triage", memory=Doc, initial="new", final=["kept", "dropped"],
        transitions=[
            tool("triage", "new", None, triage, routes={"good": "kept", "bad": "dropped"}),
        ],
    )  # fmt: skip
    for score, where in [(9, "kept"), (1, "dropped")]:
        run = await agent.start(store, Doc(score=score))
        await run.until_done()
        assert (run.state, run.status) == (where, "done")


def test_a_state_cannot_mix_waits_and_steps() -> None:
    with pytest.raises(DefinitionError, match="state 'review' mixes events \\('decide'\\)"):
        Agent(
            name="mixed", memory=Draft, initial="review", final=["done"],
            transitions=[
                wait("decide", "review", "done", payload=Decision),
                tool("auto", "review", "done", write, guard=lambda m: False),
            ],
        )  # fmt: skip


class Job(BaseModel):
    done: bool = False


def explode(m: Job) -> bool:
    raise RuntimeError("boom")


def mark(m: Job) -> bool:
    return True


async def test_a_transitions_own_failure_state_is_a_detour_the_run_goes_on_from(
    store: Store,
) -> None:
    agent = Agent(
        name="detour", memory=Job, initial="new", final=["done"], on_error="failed",
        transitions=[
            tool("try_it", "new", "done", explode, into="done", on_error="fallback"),
            tool("fallback", "fallback", "done", mark, into="done"),
        ],
    )  # fmt: skip
    run = await agent.start(store, Job())
    await run.until_done()
    assert (run.state, run.status, run.memory.done) == ("done", "done", True)
    failed = [e for e in await run.history() if e.kind == "error"]
    assert [(e.trigger, e.dest, e.status) for e in failed] == [("try_it", "fallback", "running")]
    assert failed[0].error is not None and failed[0].error["message"] == "boom"


async def test_cancel_stops_a_run_with_a_recorded_reason(store: Store) -> None:
    run = await approval().start(store, Draft(), run_id="c1")
    await run.until_done()
    await run.cancel("customer withdrew")
    await run.release()
    stored = await store.load("c1")
    assert stored is not None and (stored.status, stored.state) == ("cancelled", "review")
    last = (await store.history("c1"))[-1]
    assert (last.trigger, last.kind, last.output) == ("cancel", "control", "customer withdrew")
    with pytest.raises(RunError, match="already cancelled"):
        await run.cancel()
    await run.release()
