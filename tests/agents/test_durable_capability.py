"""`AgentfsmDurability`: the journal as a capability of the pydantic-ai agent itself behaves as
the plain agent (the same comparison as test_durable_parity.py), is durable by `run_id`, and
records what `DurableAgent` records."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from pydantic_ai import Agent, DeferredToolRequests
from pydantic_ai.agent import AgentRunResult
from pydantic_ai.models.test import TestModel

from agents import DurableAgent
from agents.durable import AgentfsmDurability
from agents.durable._segments import JOURNALS_HANDLERS
from statemachine import DefinitionError, RunError
from storage import Store

from ..conftest import make_store
from .test_durable_parity import (
    Build,
    Deps,
    Foo,
    Ran,
    complex_agent,
    gated,
    output_function,
    plain_twice,
    rich_returns,
    same,
)

_ids = itertools.count()


@pytest_asyncio.fixture(params=["embedded", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    s = await make_store(request.param, request, tmp_path)
    yield s
    await s.close()


def durable(agent: Agent[Any, Any], store: Store) -> Any:
    """`agent` with the capability added (the documented way to add one to a built agent)."""
    capabilities = [*agent.root_capability.capabilities, AgentfsmDurability(store, name="cap")]
    return agent.override(capabilities=capabilities)


needs_override = pytest.mark.skipif(
    not JOURNALS_HANDLERS,
    reason="adding a capability to a built agent (Agent.override(capabilities=)) needs"
    " pydantic-ai-slim>=2.78; the crash test covers the capability form on older ones",
)


async def cap_parity(
    build: Build, store: Store, prompt: Any = "go", **kwargs: Any
) -> tuple[AgentRunResult[Any], Ran, str]:
    """The plain agent twice, then with the capability; compared; then the same run_id again,
    which runs nothing (the tool and output function bodies ran as often as in one plain run)."""
    ran, ran_d = Ran(), Ran()
    plain = await plain_twice(lambda r: build(r).run(prompt, **kwargs), ran)
    agent = build(ran_d)
    run_id = f"cap-{next(_ids)}"
    with durable(agent, store):
        result = await agent.run(prompt, run_id=run_id, **kwargs)
        await same(plain, result, ran, ran_d)
        again = await agent.run(prompt, run_id=run_id, **kwargs)
    await same(plain, again, ran, ran_d)
    return result, ran_d, run_id


@needs_override
async def test_the_capability_form_is_the_plain_agent_and_durable(store: Store) -> None:
    _, _, run_id = await cap_parity(complex_agent, store, "Weather?", deps=Deps("Mexico"))
    events = await store.history(run_id)
    assert [e.trigger for e in events].count("tool_call") == 3
    assert events[-1].trigger == "output" and events[-1].status == "done"
    assert [(e.usage or {}).get("requests", 0) for e in events if e.trigger == "model_request"] == [
        1, 1
    ]  # fmt: skip
    await cap_parity(rich_returns, store)


@needs_override
async def test_output_functions_and_deferred_calls_in_the_capability_form(store: Store) -> None:
    result, ran, run_id = await cap_parity(output_function_by_tool, store)
    assert result.output == Foo(foo="X") and ran.counts == {"summary": 2}
    result, _, run_id = await cap_parity(gated, store)
    assert isinstance(result.output, DeferredToolRequests)  # the run's end, as in plain
    record = await store.load(run_id)
    assert record is not None and record.status == "done"


def output_function_by_tool(ran: Ran) -> Agent[None, Any]:
    from pydantic_ai.messages import ModelMessage, ModelResponse, ToolCallPart
    from pydantic_ai.models.function import AgentInfo, FunctionModel

    def brain(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        tool = next(t for t in info.output_tools if "summary" in t.name)
        return ModelResponse(parts=[ToolCallPart(tool.name, {"foo": "x"})])

    return Agent(FunctionModel(brain), output_type=output_function(ran).output_type)


async def test_one_engine_per_agent_and_a_stable_name(store: Store) -> None:
    agent = Agent(TestModel(), name="twice", capabilities=[AgentfsmDurability(store)])
    with pytest.raises(DefinitionError, match="use one engine"):
        DurableAgent(agent, store=store)
    with pytest.raises(DefinitionError, match="stable name"):
        Agent(TestModel(), capabilities=[AgentfsmDurability(store)])
    named = Agent(TestModel(), name="one", capabilities=[AgentfsmDurability(store)])
    await named.run("a", run_id="cap-prompt")
    with pytest.raises(RunError, match="another prompt"):
        await named.run("b", run_id="cap-prompt")
