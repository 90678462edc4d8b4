"""Agents for the worker tests, importable by worker processes (`agentfsm worker --agents`).

`chain`: STEPS tool steps; each appends "{idempotency_key}\\t{pid}" to the file named by
$AGENTFSM_EFFECTS (fsynced) and sleeps $AGENTFSM_STEP_SLEEP seconds (default 0.02), so a kill
lands inside steps. `inbox`: waits for a "reply" (or times out after 0.5 s), then closes.
"""

from __future__ import annotations

import os
import time

from pydantic import BaseModel

from agents import Agent, tool, wait
from statemachine import StepContext

STEPS = 5
LEASE_TTL = 1.0


class Chain(BaseModel):
    done: list[str] = []


def record(memory: Chain, ctx: StepContext) -> list[str]:
    path = os.environ.get("AGENTFSM_EFFECTS")
    if path:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{ctx.idempotency_key}\t{os.getpid()}\n".encode())
            os.fsync(fd)
        finally:
            os.close(fd)
    time.sleep(float(os.environ.get("AGENTFSM_STEP_SLEEP", "0.02")))
    return [*memory.done, ctx.trigger]


chain = Agent(
    name="chain",
    memory=Chain,
    initial="s0",
    final=[f"s{STEPS}"],
    lease_ttl=LEASE_TTL,
    transitions=[
        tool(f"t{i}", f"s{i}", f"s{i + 1}", record, into="done", retries=3) for i in range(STEPS)
    ],
)


class Inbox(BaseModel):
    reply: str = ""
    late: bool = False


inbox = Agent(
    name="inbox",
    memory=Inbox,
    initial="new",
    final=["closed"],
    lease_ttl=LEASE_TTL,
    transitions=[
        tool("open", "new", "asked", lambda m: None),
        wait("reply", "asked", "answered", payload=str, into="reply", timeout=0.5,
             on_timeout="late"),
        tool("escalate", "late", "closed", lambda m: True, into="late"),
        tool("close", "answered", "closed", lambda m: None),
    ],
)  # fmt: skip
