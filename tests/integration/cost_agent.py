"""Child processes for the cost-control tests: agents whose offline model logs each call.

    python -m tests.integration.cost_agent STORE_URL WORKDIR ledger|budget RUN_ID block|normal
    python -m tests.integration.cost_agent STORE_URL WORKDIR scope TENANT FIRST COUNT
    python -m tests.integration.cost_agent STORE_URL WORKDIR final TENANT COUNT

Every model call appends "start <monotonic>" and "end <monotonic>" lines to WORKDIR/calls.log
(one `O_APPEND` write each, so processes may share the file). In `block` mode the third call
touches WORKDIR/blocked and hangs (the test kills the process there). `scope` starts COUNT
runs of the scope-budgeted agent at once, after printing "ready" and reading a line from stdin.
`final` runs COUNT scope-budgeted runs at once and SIGKILLs itself right after the first
final commit returns (before anything else runs), having touched WORKDIR/committed.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.usage import RequestUsage

from agents import Agent, Budget, llm, tool
from agents.spending._budget import BudgetGate, Held
from statemachine import StepContext
from statemachine.engine import Transition
from storage import Event, RunRecord, Store, open_store

LEASE_TTL = 0.5
BUDGET = 3
"""Requests one `budgeted` run may make."""
SCOPE_BUDGET = 10
"""Requests all `scoped` runs of one tenant may make in a day."""


class Chat(BaseModel):
    tenant: str = ""
    text: str = ""
    count: int = 0


def _log(workdir: Path, line: str) -> None:
    fd = os.open(workdir / "calls.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, f"{line} {time.monotonic()}\n".encode())
    finally:
        os.close(fd)


def offline_model(workdir: Path, block: bool, pause: float = 0.0) -> FunctionModel:
    calls = 0

    async def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        nonlocal calls
        calls += 1
        _log(workdir, "start")
        if block and calls == 3:
            (workdir / "blocked").touch()
            await asyncio.sleep(3600)  # killed here, mid-request: paid, never recorded
        if pause:
            await asyncio.sleep(pause)  # the process's other runs go on meanwhile
        _log(workdir, "end")
        return ModelResponse(
            parts=[TextPart(f"reply {calls}")],
            usage=RequestUsage(input_tokens=10 * calls, output_tokens=3, cache_read_tokens=1),
        )

    return FunctionModel(model)


def steps(n: int) -> list[Transition]:
    states = ["new", *(f"s{i}" for i in range(1, n)), "done"]
    out: list[Transition] = []
    for i in range(n):
        out.append(
            llm(f"ask{i + 1}", states[i], states[i + 1], prompt=f"question {i + 1}", into="text")
        )
    return out


def ledger_agent(workdir: Path, block: bool) -> Agent[Chat]:
    return Agent(
        name="ledger", memory=Chat, model=offline_model(workdir, block), initial="new",
        final=["done"], lease_ttl=LEASE_TTL,
        transitions=[
            llm("ask1", "new", "s1", prompt="question 1", into="text"),
            tool("count", "s1", "counted", lambda m: len(m.text), into="count"),
            llm("ask2", "counted", "s2", prompt="question 2", into="text"),
            llm("ask3", "s2", "s3", prompt="question 3", into="text"),
            llm("ask4", "s3", "done", prompt="question 4", into="text"),
        ],
    )  # fmt: skip


def budget_agent(workdir: Path, block: bool) -> Agent[Chat]:
    return Agent(
        name="budgeted", memory=Chat, model=offline_model(workdir, block), initial="new",
        final=["done"], lease_ttl=LEASE_TTL, budget=Budget(requests=BUDGET),
        transitions=steps(5),
    )  # fmt: skip


budgeted = budget_agent(Path(os.environ.get("COST_WORKDIR", ".")), block=False)
"""For `agentfsm budget --agent tests.integration.cost_agent:budgeted`."""


def scope_agent(workdir: Path) -> Agent[Chat]:
    """Also logs "admit" when a request passed the budget check and "charged" once its
    commit was charged to the scope: between the two, a request is in flight for the
    ledger (the scope's totals do not know it yet)."""
    agent = Agent(
        name="scoped", memory=Chat, model=offline_model(workdir, False, pause=0.05),
        initial="new", final=["done"], lease_ttl=5,
        scope_budget=Budget(requests=SCOPE_BUDGET, per="day"),
        budget_scope=lambda m: m.tenant, transitions=steps(2),
    )  # fmt: skip
    admit = BudgetGate.admit

    async def admit_logged(gate: BudgetGate, memory: Any, ctx: StepContext) -> Held | None:
        held = await admit(gate, memory, ctx)
        _log(workdir, "admit")
        return held

    async def charged(record: RunRecord, event: Event, store: Store) -> None:
        if event.usage:
            _log(workdir, "charged")

    BudgetGate.admit = admit_logged  # type: ignore[method-assign,assignment]
    agent.after_commit.append(charged)  # the scope was charged by the commit itself
    return agent


def final_kill_agent(workdir: Path) -> Agent[Chat]:
    """A scope-budgeted agent whose process dies right after a run's final commit."""
    agent = Agent(
        name="final_kill", memory=Chat, model=offline_model(workdir, False, pause=0.01),
        initial="new", final=["done"], lease_ttl=5,
        scope_budget=Budget(requests=1000, per="day"),
        budget_scope=lambda m: m.tenant, transitions=steps(3),
    )  # fmt: skip

    async def die_after_final_commit(record: RunRecord, event: Event, store: Store) -> None:
        if event.status == "done":
            (workdir / "committed").write_text(record.run_id)
            os.kill(os.getpid(), signal.SIGKILL)

    agent.after_commit.insert(0, die_after_final_commit)  # before any other hook
    return agent


async def final_kill_runs(url: str, workdir: Path, tenant: str, count: int) -> None:
    store = open_store(url)
    agent = final_kill_agent(workdir)
    runs = [
        await agent.start(store, Chat(tenant=tenant), run_id=f"{tenant}-{i}") for i in range(count)
    ]
    await asyncio.gather(*(r.until_done() for r in runs))
    raise SystemExit("no run reached its final commit")


async def one_run(url: str, workdir: Path, kind: str, run_id: str, mode: str) -> None:
    store = open_store(url)
    make = ledger_agent if kind == "ledger" else budget_agent
    agent = make(workdir, block=mode == "block")
    run = await agent.start(store, Chat(), run_id=run_id, lease_wait=5)
    await run.until_done()
    await store.close()
    print(run.status, run.state, flush=True)


async def scope_runs(url: str, workdir: Path, tenant: str, first: int, count: int) -> None:
    store = open_store(url)
    agent = scope_agent(workdir)
    runs = [
        await agent.start(store, Chat(tenant=tenant), run_id=f"{tenant}-{i}")
        for i in range(first, first + count)
    ]
    print("ready", flush=True)
    sys.stdin.readline()
    await asyncio.gather(*(r.until_done() for r in runs))
    await store.close()
    print(" ".join(r.status for r in runs), flush=True)


if __name__ == "__main__":
    url, workdir, kind = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    if kind == "final":
        asyncio.run(final_kill_runs(url, workdir, sys.argv[4], int(sys.argv[5])))
    elif kind == "scope":
        asyncio.run(scope_runs(url, workdir, sys.argv[4], int(sys.argv[5]), int(sys.argv[6])))
    else:
        asyncio.run(one_run(url, workdir, kind, sys.argv[4], sys.argv[5]))
