"""A support ticket that waits for a reply for TIMEOUT seconds, then escalates."""

from __future__ import annotations

from pydantic import BaseModel

from agents import Agent, tool, wait

TIMEOUT = 3.0


class Ticket(BaseModel):
    answer: str = ""
    escalated: bool = False


ticket = Agent(
    name="ticket", memory=Ticket, initial="new", final=["closed"],
    transitions=[
        tool("open", "new", "asked", lambda m: None),
        wait("reply", "asked", "answered", payload=str, into="answer", timeout=TIMEOUT,
             on_timeout="late"),
        tool("escalate", "late", "closed", lambda m: True, into="escalated"),
        tool("close", "answered", "closed", lambda m: None),
    ],
)  # fmt: skip
