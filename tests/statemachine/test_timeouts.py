"""A wait with a timeout: the deadline is stored with the run, and any process that polls for
due timeouts (`Machine.fire_due`) sends the run on its timeout transition, once."""

from __future__ import annotations

import asyncio
import time

import pytest
from pydantic import BaseModel

from agents import Agent, tool, wait
from statemachine import DefinitionError, transition
from statemachine.errors import NotDue
from storage import Store

TIMEOUT = 0.3


class Ticket(BaseModel):
    answer: str = ""
    escalated: bool = False


def agent(timeout: float = TIMEOUT, name: str = "ticket") -> Agent[Ticket]:
    return Agent(
        name=name, memory=Ticket, initial="new", final=["closed"],
        transitions=[
            tool("open", "new", "asked", lambda m: None),
            wait("reply", "asked", "answered", payload=str, into="answer",
                 timeout=timeout, on_timeout="late"),
            tool("escalate", "late", "closed", lambda m: True, into="escalated"),
            tool("close", "answered", "closed", lambda m: None),
        ],
    )  # fmt: skip


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The runner's clock, ahead of the wall clock by the list's one number: a test moves
    time on instead of sleeping, so a busy machine cannot make a deadline pass too soon."""
    ahead = [0.0]

    def fake() -> float:
        return time.time() + ahead[0]

    monkeypatch.setattr("statemachine._clock.now", fake)
    return ahead


async def test_a_due_timeout_fires_once_and_the_run_goes_on(
    store: Store, clock: list[float]
) -> None:
    timeout = 60.0
    ticket = agent(timeout=timeout)
    run = await ticket.start(store, Ticket(), run_id="t1")
    before = time.time()
    await run.until_done()
    assert (run.state, run.status) == ("asked", "waiting")
    deadline = run.record.deadline
    assert deadline is not None and before < deadline - timeout <= time.time()
    assert await ticket.fire_due(store) == []  # not yet
    with pytest.raises(NotDue, match="no timeout due: it is waiting in state 'asked'"):
        await run.fire_timeout()

    clock[0] = timeout + 1
    assert await store.due(time.time() + clock[0]) == ["t1"]
    assert await ticket.fire_due(store, drive=False) == ["t1"]
    assert await ticket.fire_due(store) == []  # fired once
    resumed = await ticket.resume(store, "t1")
    assert (resumed.state, resumed.status, resumed.record.deadline) == ("late", "running", None)
    await resumed.until_done()
    assert (resumed.state, resumed.memory.escalated) == ("closed", True)
    fired = [e for e in await resumed.history() if e.kind == "timeout"]
    assert [(e.trigger, e.source, e.dest, e.key) for e in fired] == [
        ("reply", "asked", "late", f"t1:{resumed.record.nonce}:1:reply:timeout")
    ]
    assert fired[0].output == {"deadline": deadline, "timeout": timeout}


async def test_the_event_that_comes_first_wins(store: Store) -> None:
    ticket = agent()
    run = await ticket.start(store, Ticket(), run_id="t2")
    await run.until_done()
    await run.send("reply", "fixed it")
    await run.until_done()
    assert (run.state, run.record.deadline) == ("closed", None)
    await asyncio.sleep(TIMEOUT + 0.05)
    assert await store.due(time.time()) == []
    assert await ticket.fire_due(store) == []
    assert [e.kind for e in await run.history()].count("timeout") == 0


async def test_a_late_event_before_the_poll_is_still_accepted(store: Store) -> None:
    """Until a poller fires the timeout, the run is waiting: the event is taken."""
    ticket = agent(timeout=0.05)
    run = await ticket.start(store, Ticket(), run_id="t3")
    await run.until_done()
    await asyncio.sleep(0.1)
    await run.send("reply", "just in time")
    await run.until_done()
    assert (run.state, run.memory.answer) == ("closed", "just in time")
    assert await ticket.fire_due(store) == []


async def test_concurrent_pollers_fire_a_timeout_once(store: Store) -> None:
    ticket = agent(timeout=0.05)
    for i in range(5):
        run = await ticket.start(store, Ticket(), run_id=f"c{i}")
        await run.until_done()
    await asyncio.sleep(0.1)
    results = await asyncio.gather(*(ticket.fire_due(store) for _ in range(4)))
    fired = sorted(run_id for r in results for run_id in r)
    assert fired == [f"c{i}" for i in range(5)]
    for i in range(5):
        history = await store.history(f"c{i}")
        assert [e.kind for e in history].count("timeout") == 1


async def test_pollers_leave_other_agents_runs_alone(store: Store) -> None:
    mine, other = agent(timeout=0.05), agent(timeout=0.05, name="other")
    run = await other.start(store, Ticket(), run_id="o1")
    await run.until_done()
    await asyncio.sleep(0.1)
    assert await mine.fire_due(store) == []
    assert await other.fire_due(store) == ["o1"]


async def test_a_waiting_initial_state_gets_its_deadline_when_created(store: Store) -> None:
    waiting_first = Agent(
        name="inbox", memory=Ticket, initial="asked", final=["closed"],
        transitions=[
            wait("reply", "asked", "closed", payload=str, into="answer", timeout=60,
                 on_timeout="closed"),
        ],
    )  # fmt: skip
    run = await waiting_first.start(store, Ticket(), run_id="i1")
    assert run.status == "waiting"
    stored = await store.load("i1")
    assert stored is not None and stored.deadline == pytest.approx(stored.created_at + 60)


def test_timeouts_are_checked_when_declared() -> None:
    def table(*rows: object) -> None:
        Agent(name="x", memory=Ticket, initial="new", final=["closed"], transitions=list(rows))  # type: ignore[arg-type]

    with pytest.raises(DefinitionError, match="timeout= and on_timeout= go together"):
        table(wait("reply", "new", "closed", timeout=5))
    with pytest.raises(DefinitionError, match=r"only a wait \(an outside event\) can time out"):
        table(transition("go", "new", "closed", timeout=5, on_timeout="closed"))
    with pytest.raises(DefinitionError, match="timeout must be positive seconds, not -1"):
        table(wait("reply", "new", "closed", timeout=-1, on_timeout="closed"))
    with pytest.raises(DefinitionError, match="state 'new' has more than one timeout"):
        table(
            wait("a", "new", "closed", timeout=5, on_timeout="closed"),
            wait("b", "new", "closed", timeout=9, on_timeout="closed"),
        )
    with pytest.raises(DefinitionError, match="goes to unknown state 'gone'"):
        Agent(name="x", memory=Ticket, initial="new", final=["closed"], states=["new", "closed"],
              transitions=[wait("a", "new", "closed", timeout=5, on_timeout="gone")])  # fmt: skip


def test_the_graph_draws_the_timeout_edge() -> None:
    text = agent(timeout=90).graph().mermaid()
    assert 'asked -.->|"reply · wait<br/>timeout 90 s"| late' in text
    assert 'asked -->|"reply · wait"| answered' in text
    assert "reply · wait<br/>timeout 1 h" in agent(timeout=3600).graph().dot().replace(
        "<BR/>", "<br/>"
    )
