"""One paid model request: `llm()` steps, their output retries and `DurableAgent` admit,
price, charge and record each model request the same way (`agents.spending._paid`), under the limits
in force (declared, or set by people: lower or higher)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel
from pydantic_ai import Agent as PydanticAgent
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.usage import RequestUsage

from agents import Agent, Budget, DurableAgent, llm
from agents.spending._budget import BudgetReached, in_force, set_limits
from storage import Store


class Chat(BaseModel):
    tenant: str = "acme"
    text: str = ""


class Verdict(BaseModel):
    ok: bool


def priced(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    """A gpt-4o-mini answer: genai-prices prices it ($0.00021 for these tokens)."""
    return ModelResponse(
        parts=[TextPart("ok")],
        usage=RequestUsage(input_tokens=1000, output_tokens=100, cache_read_tokens=200),
        model_name="gpt-4o-mini", provider_name="openai",
    )  # fmt: skip


def sloppy(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    return ModelResponse(
        parts=[TextPart("not the structured output")],
        usage=RequestUsage(input_tokens=5, output_tokens=1),
    )


def chain(n: int, model: Any, **agent: Any) -> Agent[Chat]:
    states = ["new", *(f"s{i}" for i in range(1, n)), "done"]
    return Agent(
        name="paid", memory=Chat, model=model, initial="new", final=["done"],
        transitions=[
            llm(f"ask{i}", states[i], states[i + 1], prompt="p", into="text", history=False)
            for i in range(n)
        ],
        **agent,
    )  # fmt: skip


async def test_durable_agent_and_an_llm_step_record_the_same_usage_with_cost(
    store: Store,
) -> None:
    run = await chain(1, FunctionModel(priced, model_name="gpt-4o-mini")).start(store, Chat())
    await run.until_done()
    durable = DurableAgent(PydanticAgent(FunctionModel(priced, model_name="gpt-4o-mini")),
                           store=store, name="paid-durable")  # fmt: skip
    await durable.run("p", run_id="d")
    [step] = [e for e in await run.history() if e.kind == "llm"]
    [request] = [e for e in await store.history("d") if e.trigger == "model_request"]
    assert step.usage == request.usage
    assert step.usage == {"requests": 1, "input_tokens": 1000, "output_tokens": 100,
                          "cache_read_tokens": 200, "cost_nusd": 195_000}  # fmt: skip
    stored = await store.load("d")
    assert stored is not None and stored.usage == run.record.usage


async def test_a_durable_agent_cost_budget_stops_the_run(store: Store) -> None:
    model = FunctionModel(priced, model_name="gpt-4o-mini")
    inner = PydanticAgent(model, output_type=Verdict, retries=5)  # refused: retried
    durable = DurableAgent(inner, store=store, name="costly", budget=Budget(cost=0.0003))
    with pytest.raises(BudgetReached, match="cost_nusd"):
        await durable.run("p", run_id="c")
    record = await store.load("c")
    assert record is not None
    assert (record.usage["requests"], record.usage["cost_nusd"]) == (2, 390_000)


async def test_a_scope_budget_is_checked_before_every_output_retry(store: Store) -> None:
    agent = Agent(
        name="judge", memory=Chat, model=FunctionModel(sloppy), initial="new", final=["done"],
        transitions=[llm("judge", "new", "done", prompt="p", output=Verdict, output_retries=3)],
        scope_budget=Budget(requests=1), budget_scope=lambda m: m.tenant,
    )  # fmt: skip
    run = await agent.start(store, Chat())
    await run.until_done()
    assert run.status == "waiting"
    assert run.record.usage["requests"] == 1  # not 4: the retries were refused
    last = (await run.history())[-1]
    assert last.kind == "halt" and last.output == {
        "budget": "scope", "name": "acme", "period": "all", "limits": {"requests": 1},
        "used": {"requests": 1},
    }  # fmt: skip


@pytest.mark.parametrize("kind", ["run", "scope"])
async def test_limits_set_lower_than_the_declared_ones_hold(store: Store, kind: str) -> None:
    declared = Budget(requests=6)
    if kind == "run":
        agent = chain(6, FunctionModel(priced), budget=declared)
    else:
        agent = chain(6, FunctionModel(priced), scope_budget=declared,
                      budget_scope=lambda m: m.tenant)  # fmt: skip
    run = await agent.start(store, Chat(), run_id="low")
    subject: dict[str, Any] = {"run_id": "low"} if kind == "run" else {"scope": "acme"}
    await set_limits(store, limits=Budget(requests=2), **subject)
    await run.until_done()
    assert run.status == "waiting"
    assert run.record.usage["requests"] == 2
    name = "run/low" if kind == "run" else "scope/acme"
    assert await in_force(store, name, declared) == {"requests": 2}
    moved = await agent.raise_budget(store, limits=Budget(requests=9), **subject)
    assert [d.run_id for d in moved] == ["low"]
    again = await agent.resume(store, "low")
    await again.until_done()
    assert (again.status, again.record.usage["requests"]) == ("done", 6)


async def test_budget_show_the_ui_and_the_error_show_the_same_limits(
    tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    import asyncio
    import html

    from starlette.testclient import TestClient

    from agents.cli import main
    from agents.spending._budget import limits_line
    from agents.ui import create_app
    from storage import open_store

    url = f"sqlite:///{tmp_path / 'limits.db'}"
    store = open_store(url)
    run = await LIMITED.start(store, Chat(), run_id="lim")
    await set_limits(store, run_id="lim", limits=Budget(requests=1))
    await run.until_done()
    halt = (await run.history())[-1]
    await store.close()
    expected = limits_line({"requests": 1, "cost_nusd": 5_000_000_000})
    assert expected == "cost $5, requests 1"  # declared cost, requests set lower
    assert (halt.kind, halt.output) == ("halt", {
        "budget": "run", "name": "lim", "limits": {"requests": 1}, "used": {"requests": 1},
    })  # fmt: skip
    agent = "tests.agents.test_paid_request:LIMITED"

    def cli(*argv: str) -> str:
        assert main([*argv, "--store", url]) == 0
        return capsys.readouterr().out

    assert f"limits   {expected}" in await asyncio.to_thread(cli, "budget", "lim", "--agent", agent)
    assert f"limits   {expected}" in await asyncio.to_thread(cli, "show", "lim", "--agent", agent)

    def page() -> str:
        ui_store = open_store(url)
        app = create_app(ui_store, agents=[LIMITED], token="t" * 20)
        with TestClient(app, base_url="http://127.0.0.1:8765") as client:
            client.get("/?token=" + "t" * 20)
            text = client.get("/runs/lim").text
        asyncio.run(ui_store.close())
        return html.unescape(text)

    assert f"limits {expected}" in await asyncio.to_thread(page)


LIMITED = chain(3, FunctionModel(priced), budget=Budget(cost=5.0, requests=6))
"""A run budget declared with a cost and a request limit (the test sets requests lower)."""


async def test_a_budget_raise_dry_run_names_the_runs_and_commits_nothing(
    tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    import asyncio

    from agents.cli import main
    from storage import open_store

    url = f"sqlite:///{tmp_path / 'dry.db'}"
    store = open_store(url)
    run = await LIMITED.start(store, Chat(), run_id="dry")
    await set_limits(store, run_id="dry", limits=Budget(requests=1))
    await run.until_done()
    assert run.status == "waiting"
    before = (await store.load("dry"), await in_force(store, "run/dry", None))

    def cli() -> str:
        argv = ["budget", "dry", "--requests", "9", "--dry-run", "--store", url,
                "--agent", "tests.agents.test_paid_request:LIMITED"]  # fmt: skip
        assert main(argv) == 0
        return capsys.readouterr().out

    said = await asyncio.to_thread(cli)
    assert "would set requests 9; would send on: dry: commits a 'retry' event as seq 3" in said
    assert "nothing committed" in said
    assert (await store.load("dry"), await in_force(store, "run/dry", None)) == before
    await store.close()


SCOPED = chain(2, FunctionModel(priced), scope_budget=Budget(requests=3),
               budget_scope=lambda m: m.tenant)  # fmt: skip
"""A scope budget without `per=`: one ledger for all time (period "all")."""


async def test_budget_shows_the_usage_of_a_scope_without_a_period(
    redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    import asyncio

    from agents.cli import main
    from storage import open_store

    url = f"{redis_url}?prefix=noper"
    store = open_store(url)
    try:
        await (await SCOPED.start(store, Chat(tenant="solo"))).until_done()
        halted = await SCOPED.start(store, Chat(tenant="solo"))
        await halted.until_done()
        assert halted.status == "waiting"
    finally:
        await store.close()

    def cli(*argv: str) -> str:
        assert main([*argv, "--store", url]) == 0
        return capsys.readouterr().out

    agent = "tests.agents.test_paid_request:SCOPED"
    said = await asyncio.to_thread(cli, "budget", "--scope", "solo", "--agent", agent)
    assert "usage    3 requests" in said and "limits   requests 3" in said
