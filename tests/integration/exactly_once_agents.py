"""Child processes for the exactly-once tests: agents with **default** settings.

    python -m tests.integration.exactly_once_agents start SHAPE URL RUN_ID WORKDIR BLOCK_AT
    python -m tests.integration.exactly_once_agents resume SHAPE URL RUN_ID WORKDIR

SHAPE `tools`: five sync tool steps t0..t4. SHAPE `analysis`: plan (LLM) → calculate (tool)
→ interpret (LLM) → detect (tool) → report (LLM), the data-analysis shape. Every tool try
appends "{idempotency_key}\t{trigger}\t{pid}" to WORKDIR/effects.log and every model request
a line to WORKDIR/requests.log (both fsynced). With `start`, the step named BLOCK_AT prints
"in BLOCK_AT" and blocks until WORKDIR/go exists (the parent SIGKILLs or SIGSTOPs it there);
with ONCE_STOP_GATE set, it prints that line only once WORKDIR/stop-now exists and a lease
renewal has just ended (the moment to SIGSTOP it: no write in flight).
`resume` calls
`agent.resume(store, run_id)` + `until_done()` without `lease_wait`, then prints
"done SECONDS STATUS REFUSED" (time from the call to the end, the run's status, how often the
store answered LeaseHeld) or "taken-over". With ONCE_RESUME_GATE set, it first prints
"ready" and waits for WORKDIR/resume-go (so its start-up is not part of what is measured).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from agents import Agent, llm, tool
from statemachine import StepContext
from statemachine.errors import RunTakenOver
from storage import Lease, LeaseHeld, Store, open_store

TOOLS = [f"t{i}" for i in range(5)]
ANALYSIS = ["plan", "calculate", "interpret", "detect", "report"]


class Work(BaseModel):
    done: list[str] = []


def _append(path: Path, line: str) -> None:
    with open(path, "a") as log:
        log.write(line + "\n")
        log.flush()
        os.fsync(log.fileno())


_renewals: list[float] = []
"""When this process's lease renewals ended (`track_renewals`)."""


def _after_a_renewal(workdir: Path) -> None:
    """With ONCE_STOP_GATE set: wait for WORKDIR/stop-now, then for a lease renewal to end.

    On the embedded store a renewal is a write transaction: a SIGSTOP inside one would leave
    the store locked by a stopped process (which the store names, instead of letting anyone
    wait for the lease). Right after a renewal the next one is a third of the TTL away."""
    if not os.environ.get("ONCE_STOP_GATE"):
        return
    give_up = time.monotonic() + 600  # a parent that failed never says when
    while not (workdir / "stop-now").exists() and time.monotonic() < give_up:
        time.sleep(0.01)
    seen = len(_renewals)
    while len(_renewals) == seen and time.monotonic() < give_up:
        time.sleep(0.005)


def make_agent(shape: str, workdir: Path, block_at: str) -> Agent[Work]:
    def block_if(trigger: str) -> None:
        if trigger == block_at:
            _after_a_renewal(workdir)
            print(f"in {trigger}", flush=True)
            give_up = time.monotonic() + 600  # a parent that failed never says go
            while not (workdir / "go").exists() and time.monotonic() < give_up:
                time.sleep(0.05)  # killed or stopped here by the parent

    def step(memory: Work, ctx: StepContext) -> list[str]:
        _append(workdir / "effects.log", f"{ctx.idempotency_key}\t{ctx.trigger}\t{os.getpid()}")
        block_if(ctx.trigger)
        return [*memory.done, ctx.trigger]

    ttl = float(os.environ.get("ONCE_LEASE_TTL", "15"))  # 15: the default
    if shape == "tools":
        return Agent(
            name="five_tools", memory=Work, initial="s0", final=["s5"], lease_ttl=ttl,
            transitions=[tool(t, f"s{i}", f"s{i + 1}", step, into="done")
                         for i, t in enumerate(TOOLS)],
        )  # fmt: skip

    def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        asked = str(messages[-1].parts[-1].content)  # type: ignore[union-attr]
        _append(workdir / "requests.log", asked)
        block_if(asked)
        return ModelResponse(parts=[TextPart(f"answer to {asked}")])

    def ask(trigger: str) -> Any:
        return lambda m: trigger

    return Agent(
        name="analysis", memory=Work, model=FunctionModel(model), initial="s0", final=["s5"],
        lease_ttl=ttl,
        transitions=[
            llm(t, f"s{i}", f"s{i + 1}", prompt=ask(t),
                update=lambda m, out: {"done": [*m.done, out]})
            if t in ("plan", "interpret", "report")
            else tool(t, f"s{i}", f"s{i + 1}", step, into="done")
            for i, t in enumerate(ANALYSIS)
        ],
    )  # fmt: skip


def count_refusals(store: Store) -> list[LeaseHeld]:
    """The `LeaseHeld` answers this process gets (a list the store's method appends to)."""
    refused: list[LeaseHeld] = []
    acquire = store.acquire_lease

    async def counted(run_id: str, owner: str, ttl: float) -> Lease | LeaseHeld:
        got = await acquire(run_id, owner, ttl)
        if isinstance(got, LeaseHeld):
            refused.append(got)
        return got

    store.acquire_lease = counted  # type: ignore[method-assign]
    return refused


def track_renewals(store: Store) -> None:
    """Note in `_renewals` when each of this process's lease renewals ended."""
    renew = store.renew_lease

    async def noted(lease: Lease) -> bool:
        try:
            return await renew(lease)
        finally:
            _renewals.append(time.monotonic())

    store.renew_lease = noted  # type: ignore[method-assign]


async def main(command: str, shape: str, url: str, run_id: str, workdir: str, *rest: str) -> None:
    block_at = rest[0] if command == "start" else ""
    agent = make_agent(shape, Path(workdir), block_at)
    store = open_store(url, prefix="once")
    try:
        refused = count_refusals(store)
        track_renewals(store)
        if os.environ.get("ONCE_RESUME_GATE"):  # started early: go when the parent says
            print("ready", flush=True)
            while not (Path(workdir) / "resume-go").exists():  # noqa: ASYNC110 (a file)
                await asyncio.sleep(0.01)
        began = time.monotonic()
        if command == "start":
            run = await agent.start(store, Work(), run_id=run_id)
        else:
            run = await agent.resume(store, run_id)
        try:
            await run.until_done()
        except RunTakenOver:
            print("taken-over", flush=True)
            return
        print(f"done {time.monotonic() - began:.3f} {run.status} {len(refused)}", flush=True)
    finally:
        await store.close()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:]))
