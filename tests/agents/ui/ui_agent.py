"""An agent for the web UI's tests: it steps when the test opens a gate, can be made to fail,
and waits for a typed answer before it finishes.

    new --tick--> ticked --check--> ready --answer(wait: Answer)--> answered --finish--> done

`tick` and `check` each wait for a file `$UI_GATES/<step>` before they return (no gate
directory: they return at once), so a test can watch the run advance one commit at a time.
`check` raises when the memory says `fail` (the run fails, and can be retried)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from pydantic import BaseModel

from agents import Agent, tool, wait

__all__ = ["Answer", "Ticket", "ui_agent"]


class Answer(BaseModel):
    by: str
    approved: bool
    count: int = 1


class Ticket(BaseModel):
    title: str
    ticks: int = 0
    fail: bool = False
    checked: str = ""
    answer: Answer | None = None
    result: str = ""


def _gate(step: str) -> None:
    gates = os.environ.get("UI_GATES")
    if not gates:
        return
    gate = Path(gates) / step
    give_up = time.monotonic() + 120
    while not gate.exists():  # the test opens it when it wants the step to end
        if time.monotonic() > give_up:
            raise TimeoutError(f"gate {gate} never opened")
        time.sleep(0.02)


def tick(memory: Ticket) -> int:
    _gate("tick")
    return memory.ticks + 1


def check(memory: Ticket) -> str:
    _gate("check")
    if memory.fail:
        raise RuntimeError(f"check failed for {memory.title!r}")
    return f"checked {memory.title}"


def finish(memory: Ticket) -> str:
    assert memory.answer is not None
    verdict = "approved" if memory.answer.approved else "rejected"
    return f"{verdict} by {memory.answer.by} x{memory.answer.count}"


ui_agent: Agent[Ticket] = Agent(
    name="ui_ticket",
    memory=Ticket,
    initial="new",
    final=["done"],
    on_error="failed",
    transitions=[
        tool("tick", "new", "ticked", tick, into="ticks"),
        tool("check", "ticked", "ready", check, into="checked"),
        wait("answer", "ready", "answered", payload=Answer, into="answer"),
        tool("finish", "answered", "done", finish, into="result"),
    ],
)
