"""Human in the loop: draft a reply with an LLM, wait for a person to approve it or ask for
changes, then send it.

    agentfsm run agents.examples.approval:approval --input '{"request": "refund for order 42"}'
    agentfsm send RUN_ID review --data '{"verdict": "revise", "note": "be warmer", "by": "ana"}'
    agentfsm send RUN_ID review --data '{"verdict": "approve", "by": "ana"}'

While it waits, the run holds nothing: no process, no lease. Any process may deliver the event.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from agents import Agent, llm, tool, wait
from agents.examples._offline import choose_model, offline_model
from statemachine import transition

__all__ = ["Reply", "Review", "approval"]


class Review(BaseModel):
    """What the person decides."""

    verdict: Literal["approve", "revise"]
    by: str
    note: str = ""


class Reply(BaseModel):
    """The agent's memory."""

    request: str
    draft: str = ""
    review: Review | None = None
    sent: str = ""


def _offline_reply(prompt: str) -> str:
    if "Revise" in prompt:
        return "Dear customer, thank you for your patience: your refund is on its way today."
    return "Dear customer, your refund has been approved."


def _prompt(memory: Reply) -> str:
    if memory.review is not None and memory.review.verdict == "revise":
        return f"Revise this reply ({memory.review.note}):\n{memory.draft}"
    return f"Draft a short reply to this customer request: {memory.request}"


def send_reply(memory: Reply) -> str:
    """Stands in for an e-mail API; a real one would get ctx.idempotency_key."""
    return memory.draft


def approved(memory: Reply) -> bool:
    return memory.review is not None and memory.review.verdict == "approve"


approval: Agent[Reply] = Agent(
    name="approval",
    memory=Reply,
    model=choose_model(lambda: offline_model("approval", _offline_reply)),
    initial="new",
    final=["sent"],
    on_error="failed",
    transitions=[
        llm("draft", "new", "review", prompt=_prompt, into="draft", max_visits=5),
        wait("review", "review", "reviewed", payload=Review, into="review"),
        tool("send", "reviewed", "sent", send_reply, into="sent", guard=approved),
        transition("revise", "reviewed", "new"),  # no step: back to drafting
    ],
)
