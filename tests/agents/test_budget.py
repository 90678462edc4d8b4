"""Budgets and usage in one process: the figures on the run, a budget's state, scopes, the
DurableAgent's model requests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from pydantic import BaseModel
from pydantic_ai import Agent as PydanticAgent
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.usage import RequestUsage

from agents import Agent, Budget, DurableAgent, llm
from agents.spending._budget import BudgetReached, set_limits
from statemachine import DefinitionError
from storage import Store, open_store

from ..conftest import make_store


class Chat(BaseModel):
    tenant: str = "acme"
    text: str = ""


def reply(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    return ModelResponse(
        parts=[TextPart("ok")], usage=RequestUsage(input_tokens=7, output_tokens=2)
    )


def chain(n: int, **agent: object) -> Agent[Chat]:
    states = ["new", *(f"s{i}" for i in range(1, n)), "done"]
    return Agent(
        name="chain", memory=Chat, model=FunctionModel(reply), initial="new",
        final=["done", "over"] if "on_budget" in agent else ["done"],
        transitions=[
            llm(f"ask{i}", states[i], states[i + 1], prompt="p", into="text", history=False)
            for i in range(n)
        ],
        **agent,  # type: ignore[arg-type]
    )  # fmt: skip


@pytest_asyncio.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = open_store(f"sqlite:///{tmp_path / 's.db'}")
    yield s
    await s.close()


async def test_the_run_carries_its_usage_totals(store: Store) -> None:
    run = await chain(3).start(store, Chat())
    await run.until_done()
    assert run.record.usage == {"requests": 3, "input_tokens": 21, "output_tokens": 6}
    stored = await store.load(run.run_id)
    assert stored is not None and stored.usage == run.record.usage


async def test_a_token_budget_sends_the_run_to_its_on_budget_state(store: Store) -> None:
    agent = chain(4, budget=Budget(total_tokens=18), on_budget="over")
    run = await agent.start(store, Chat())
    await run.until_done()
    assert (run.state, run.status) == ("over", "done")
    last = (await run.history())[-1]
    assert last.kind == "halt" and last.output == {
        "budget": "run", "name": run.run_id, "limits": {"total_tokens": 18},
        "used": {"total_tokens": 18},
    }  # fmt: skip
    assert run.record.usage["requests"] == 2


async def test_a_scope_budget_is_shared_by_the_runs_of_one_scope(store: Store) -> None:
    agent = chain(2, scope_budget=Budget(requests=3, per="day"), budget_scope=lambda m: m.tenant)
    first = await agent.start(store, Chat(tenant="acme"))
    await first.until_done()
    second = await agent.start(store, Chat(tenant="acme"))
    await second.until_done()
    other = await agent.start(store, Chat(tenant="globex"))
    await other.until_done()
    assert (first.status, second.status, other.status) == ("done", "waiting", "done")
    assert second.record.usage["requests"] == 1
    moved = await agent.raise_budget(store, scope="acme", limits=Budget(requests=4))
    assert [(d.run_id, d.status) for d in moved] == [(second.run_id, "running")]
    assert moved[0].then.startswith("left for `agentfsm resume")  # no worker serves it
    again = await agent.resume(store, second.run_id)
    await again.until_done()
    assert again.status == "done"


def test_budget_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="requests"):
        Budget(requests=-1)
    with pytest.raises(DefinitionError, match="go together"):
        chain(1, scope_budget=Budget(requests=1))
    with pytest.raises(DefinitionError, match="'nowhere' is a dead end"):
        chain(1, budget=Budget(requests=1), on_budget="nowhere")


async def test_a_durable_agent_stops_at_its_budget_and_goes_on_once_raised(
    store: Store,
) -> None:
    def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        if len(messages) < 5:
            return ModelResponse(parts=[ToolCallPart("ping", {}, tool_call_id=f"c{len(messages)}")])
        return ModelResponse(parts=[TextPart("pong")])

    inner = PydanticAgent(FunctionModel(model), name="pinger")

    @inner.tool_plain
    def ping() -> str:
        return "pong"

    durable = DurableAgent(inner, store=store, budget=Budget(requests=2))
    with pytest.raises(BudgetReached):
        await durable.run("go", run_id="d1")
    record = await store.load("d1")
    assert record is not None and record.usage["requests"] == 2
    assert record.usage["tool_calls"] == 2
    await durable.raise_budget("d1", limits=Budget(requests=5))
    result = await durable.run(run_id="d1")
    assert result.output == "pong"
    assert await store.ledger.limits("run/d1") == {"requests": 5}


class Verdict(BaseModel):
    ok: bool


async def test_output_retries_stop_at_the_budget_too(store: Store) -> None:
    def sloppy(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        return ModelResponse(parts=[TextPart("not the structured output")])

    agent = Agent(
        name="sloppy", memory=Chat, model=FunctionModel(sloppy), initial="new", final=["done"],
        budget=Budget(requests=1),
        transitions=[llm("judge", "new", "done", prompt="p", output=Verdict, output_retries=3)],
    )  # fmt: skip
    run = await agent.start(store, Chat())
    await run.until_done()
    assert run.status == "waiting"
    assert run.record.usage["requests"] == 1
    assert (await run.history())[-1].kind == "halt"


@pytest_asyncio.fixture(params=["redis", "embedded"])
async def real_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """The real redis-server (a prefix of its own) and the embedded store."""
    s = await make_store(request.param, request, tmp_path)
    yield s
    await s.close()


async def test_a_scope_request_that_got_no_answer_gives_its_room_back(
    real_store: Store,
) -> None:
    calls = 0

    def flaky(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("the provider hung up")  # no answer: nothing paid
        return ModelResponse(parts=[TextPart("not the structured output")])

    agent = Agent(
        name="sloppy", memory=Chat, model=FunctionModel(flaky), initial="new", final=["done"],
        scope_budget=Budget(requests=2), budget_scope=lambda m: m.tenant,
        transitions=[llm("judge", "new", "done", prompt="p", output=Verdict, output_retries=3,
                         retries=0)],
    )  # fmt: skip
    failed = await agent.start(real_store, Chat())
    await failed.until_done()
    assert failed.status == "failed" and not failed.record.usage.get("requests")
    # its unanswered request gave its room back: this run gets both requests, then halts
    run = await agent.start(real_store, Chat())
    await run.until_done()
    assert run.status == "waiting" and (await run.history())[-1].kind == "halt"
    assert run.record.usage["requests"] == 2 and calls == 3
    assert await real_store.ledger.scope_usage("acme", "all") == run.record.usage


async def test_a_step_that_failed_or_halted_after_paying_gives_its_reservation_back(
    real_store: Store,
) -> None:
    """Its event (error, halt) has a key of its own; its charge still ends the run's
    reservation, or the scope would count those requests twice until it lapses."""

    def sloppy(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        return ModelResponse(parts=[TextPart("not the structured output")])

    def judge(name: str, output_retries: int) -> Agent[Chat]:
        return Agent(
            name=name, memory=Chat, model=FunctionModel(sloppy), initial="new", final=["done"],
            scope_budget=Budget(requests=3), budget_scope=lambda m: m.tenant,
            transitions=[llm("judge", "new", "done", prompt="p", output=Verdict, retries=0,
                             output_retries=output_retries)],
        )  # fmt: skip

    one = chain(1, scope_budget=Budget(requests=3), budget_scope=lambda m: m.tenant)
    failed = await judge("fails", 1).start(real_store, Chat())
    await failed.until_done()  # 2 requests, then gives up
    assert (failed.status, failed.record.usage["requests"]) == ("failed", 2)
    assert (await (await one.start(real_store, Chat())).until_done()).status == "done"  # 3 of 3
    await set_limits(real_store, scope="acme", limits=Budget(requests=5))
    halted = await judge("halts", 3).start(real_store, Chat())
    await halted.until_done()  # 2 more requests, then the scope is full
    assert (halted.status, halted.record.usage["requests"]) == ("waiting", 2)
    await set_limits(real_store, scope="acme", limits=Budget(requests=6))
    assert (await (await one.start(real_store, Chat())).until_done()).status == "done"  # 6 of 6
    assert (await real_store.ledger.scope_usage("acme", "all"))["requests"] == 6


def test_a_priced_request_records_its_cost_in_nano_dollars() -> None:
    from decimal import Decimal

    from pydantic_ai.usage import RunUsage

    from agents.spending._usage_text import usage_line
    from agents.steps._tool_engine import charge
    from statemachine import StepContext

    async def nothing() -> list[Any]:
        return []

    ctx = StepContext(run_id="r", seq=0, trigger="t", attempt=1, idempotency_key="k",
                      conversation=nothing, history=nothing)  # fmt: skip
    usage = RunUsage(requests=1, input_tokens=1000, output_tokens=100, cache_read_tokens=50,
                     cost=Decimal("0.00021"))  # fmt: skip
    spent = charge(ctx, usage)
    assert spent == {"requests": 1, "input_tokens": 1000, "output_tokens": 100,
                     "cache_read_tokens": 50, "cost_nusd": 210_000}  # fmt: skip
    assert usage_line(spent) == "1 requests, 1000 in, 100 out, 50 cache read, $0.000210"
    assert Budget(cost=0.5).ledger_limits() == {"cost_nusd": 500_000_000}


async def test_a_cost_budget_counts_what_genai_prices_says_the_requests_cost(
    store: Store,
) -> None:
    def priced(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        return ModelResponse(
            parts=[TextPart("ok")], usage=RequestUsage(input_tokens=1000, output_tokens=100),
            model_name="gpt-4o-mini", provider_name="openai",
        )  # fmt: skip

    agent = chain(4, budget=Budget(cost=0.0004)).with_model(
        FunctionModel(priced, model_name="gpt-4o-mini")
    )
    run = await agent.start(store, Chat())
    await run.until_done()
    assert run.status == "waiting"  # $0.00021 a request: the third would go past $0.0004
    assert run.record.usage["requests"] == 2
    assert run.record.usage["cost_nusd"] == 420_000
