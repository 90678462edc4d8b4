"""`durable_sleep`: the waits pydantic-ai makes inside a run (between polls of a response the
provider suspended, an OpenAI background response or a batch; a retry's delay), made durable.

pydantic-ai makes every such wait through the sleep function a durability engine registers
(`Agent.using_sleep`, which `BaseDurabilityCapability.wrap_run` calls with the engine's
`durable_sleep`). Ours commits the wake-up time first (a `sleep` transition, running to running),
then waits until it. A run resumed in another process after a crash during the wait finds that
commit at the same place of the replay and waits only what is left of it (nothing, when the time
passed); a wait the history already went past (a model request after it was committed), or one in
the replay of a run that ended, is not waited again, nor committed (so runs stored before waits
were journaled replay as before).

The wait itself holds the process, as DBOS's `sleep_in_workflow` does between its recorded start
and end: a DurableAgent run is pydantic-ai's own code running in the caller's process, so no
worker could take it over at the wake-up time (docs/durable-scenarios.md says why).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import anyio
from pydantic import JsonValue

from statemachine import StepContext
from statemachine.engine import StepResult

from ._journal import Journal
from ._steps import PENDING, SLEEP, DurableMemory

__all__ = ["Sleeps", "sleep"]

sleep = anyio.sleep
"""How the process waits (a test replaces it to see how long a resumed run waits)."""


@dataclass(eq=False)
class Sleeps:
    """The durable sleep of one journal's run: give it to `Agent.using_sleep`."""

    journal: Journal
    _wakes: dict[tuple[int, int, int], float] = field(default_factory=dict, repr=False)
    """Committed wake-up times (unix seconds) by (segment, model requests before, nth there)."""
    _asked: dict[tuple[int, int], int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for e in self.journal.events:
            if e.trigger == SLEEP and e.kind != "error" and isinstance(e.output, dict):
                o = e.output
                at = (int(str(o["segment"])), int(str(o["after"])), int(str(o["nth"])))
                self._wakes[at] = float(str(o["wake"]))

    async def __call__(self, seconds: float) -> None:
        journal = self.journal
        pending = PENDING.get()
        if pending is not None and pending.run is journal.run:
            # Inside one of the run's own steps (an agent a tool runs inherited this sleep):
            # that step is not replayed piecewise, so its waits are plain.
            await sleep(max(seconds, 0))
            return
        point = (journal.segment, journal.model_index)
        nth = self._asked.get(point, 0)
        self._asked[point] = nth + 1
        at = (*point, nth)
        if journal.model_index < journal.answered or journal.run.status != "running":
            return  # the history went on after this wait (or ends here): it is over
        wake = self._wakes.get(at)
        if wake is None:
            wake = await self._commit(at, seconds)
        await sleep(max(wake - time.time(), 0))

    async def _commit(self, at: tuple[int, int, int], seconds: float) -> float:
        async def op(ctx: StepContext) -> StepResult[DurableMemory]:
            out: dict[str, JsonValue] = {
                "segment": at[0], "after": at[1], "nth": at[2], "seconds": seconds,
                "wake": time.time() + max(seconds, 0),
            }  # fmt: skip
            return StepResult(memory=self.journal.run.memory, output=out, subkey=str(at[2]))

        event = await self.journal.fire(SLEEP, op)
        assert isinstance(event.output, dict)
        wake = float(str(event.output["wake"]))
        self._wakes[at] = wake
        return wake
