"""An agent whose tool charges a card and then times out on its first try (the charge went
through on the "provider's" side). Every call appends its idempotency key to the file named
by $CHARGE_LOG, as a payment provider's log of requests would.

    agentfsm run tests.integration.charge_agent:charge --run-id ID --input '{}'
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from pydantic import BaseModel

from agents import Agent, tool
from statemachine import StepContext

TIMEOUT = 1.0


class Order(BaseModel):
    receipt: str = ""


def charge_card(memory: Order, ctx: StepContext) -> str:
    log = Path(os.environ["CHARGE_LOG"])
    first = not log.exists()
    with open(log, "a") as f:
        f.write(ctx.idempotency_key + "\n")
    if first:  # the provider charged, but the answer comes too late: once the charge was
        # retried in this process, or after three timeouts (a retry in another process)
        give_up = time.monotonic() + TIMEOUT * 3
        while len(log.read_text().splitlines()) < 2 and time.monotonic() < give_up:
            time.sleep(0.01)
    return f"paid under {ctx.idempotency_key}"


charge = Agent(
    name="charge", memory=Order, initial="new", final=["paid"], on_error="failed",
    transitions=[tool("charge", "new", "paid", charge_card, into="receipt", timeout=TIMEOUT)],
)  # fmt: skip
