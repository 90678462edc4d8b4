"""An engine operation asked twice from the seq it was checked at (a form posted twice, a
retried request) commits once; the second answer says what the first did."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from agents import Agent, tool, wait
from statemachine.engine import Action, Refused, operate
from storage import Store


class Ticket(BaseModel):
    answer: str = ""


desk = Agent(
    name="desk", memory=Ticket, initial="new", final=["done"],
    transitions=[
        tool("open", "new", "asked", lambda m: None),
        wait("answer", "asked", "done", payload=str, into="answer"),
    ],
)  # fmt: skip


@pytest.mark.parametrize(
    "action",
    [Action(name="send", event="answer", payload="yes"), Action(name="cancel", reason="dup")],
)
async def test_an_operation_asked_twice_from_one_seq_commits_once(
    store: Store, action: Action
) -> None:
    run = await desk.run(store, Ticket(), run_id="t")
    assert run.status == "waiting"
    seq = run.seq
    first = await operate(desk, store, "t", action, expect_seq=seq)
    again = await operate(desk, store, "t", action, expect_seq=seq)
    assert first.event is not None and not first.again
    assert again.again and again.event == first.event
    history = await store.history("t")
    assert [e.seq for e in history] == list(range(seq + 2))  # one commit, not two
    other = Action(name="retry")  # the run moved, but not by this one: look again
    with pytest.raises(Refused, match="moved on since this was checked"):
        await operate(desk, store, "t", other, expect_seq=seq)
