"""A child process whose `DurableAgent` run waits an hour between two polls of a response the
provider suspended (pydantic-ai's continuation delay, made durable by `_sleep.py`).

    python -m tests.integration.sleep_agent STORE_URL RUN_ID WORKDIR

Every model request appends "request" to WORKDIR/effects.log. When the run commits its wait,
the process writes the wake-up time to WORKDIR/sleeping (renamed into place: never seen
empty), then waits; the parent kills it there and resumes the run itself (`make_agent`).
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart
from pydantic_ai.models import Model, ModelRequestParameters
from pydantic_ai.settings import ModelSettings
from pydantic_ai.usage import RequestUsage

from agents import DurableAgent
from storage import Event, Store, open_store

PREFIX = "durablesleep"
DELAY = 3600.0
EXPECTED = "The answer is 42."


class Polled(Model):
    """Suspends its first response (a background job), completes it when polled again, and
    asks pydantic-ai to wait `DELAY` seconds between the two."""

    def __init__(self, workdir: Path) -> None:
        super().__init__()
        self.log = workdir / "effects.log"

    @property
    def model_name(self) -> str:
        return "polled"

    @property
    def system(self) -> str:
        return "polled"

    async def request(
        self,
        messages: list[ModelMessage],
        model_settings: ModelSettings | None,
        model_request_parameters: ModelRequestParameters,
    ) -> ModelResponse:
        await asyncio.to_thread(_append, self.log, "request")
        polled = isinstance(messages[-1], ModelResponse) and messages[-1].state == "suspended"
        return ModelResponse(
            parts=[TextPart("is 42." if polled else "The answer ")], model_name="polled",
            provider_name="polled", provider_response_id="job-2" if polled else "job-1",
            usage=RequestUsage(input_tokens=2, output_tokens=2),
            state="complete" if polled else "suspended",
        )  # fmt: skip

    def continuation_delay(self, response: ModelResponse) -> float | None:
        return DELAY


def _append(path: Path, line: str) -> None:
    with open(path, "a") as f:
        f.write(line + "\n")


def make_agent(workdir: Path, store: Store) -> DurableAgent[None, str]:
    return DurableAgent(Agent(Polled(workdir), name="polled"), store=store, lease_ttl=0.5)


async def main(url: str, run_id: str, workdir: str) -> None:
    where = Path(workdir)

    def note(event: Event) -> Any:
        if event.trigger == "sleep" and isinstance(event.output, dict):
            tmp = where / "sleeping.tmp"
            tmp.write_text(str(event.output["wake"]))
            os.replace(tmp, where / "sleeping")

    store = open_store(url, prefix=PREFIX)
    try:
        result = await make_agent(where, store).run("go", run_id=run_id, on_event=note)
        print(result.output)
    finally:
        await store.close()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
