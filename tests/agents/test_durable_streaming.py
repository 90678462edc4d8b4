"""DurableAgent streaming parity: `run_stream_events()` and `event_stream_handler=` give
pydantic-ai's own events, the same and in the same order as a plain `Agent` run of the same
`FunctionModel` script, from the durable steps; the tokens also reach the live channel."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from pydantic_ai import Agent, RunContext
from pydantic_ai.capabilities import ProcessEventStream
from pydantic_ai.messages import AgentStreamEvent, ModelMessage, ModelResponse, ToolCallPart
from pydantic_ai.models.function import AgentInfo, DeltaToolCall, DeltaToolCalls, FunctionModel
from pydantic_ai.run import AgentRun, AgentRunResultEvent

from agents import DurableAgent
from storage import Store

from ..conftest import make_store
from ..varying import compare, jsonable
from .test_durable_parity import STABLE, run_json

_ids = itertools.count()


@pytest_asyncio.fixture(params=["embedded", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    s = await make_store(request.param, request, tmp_path)
    yield s
    await s.close()


class Script:
    """A model that streams a tool call (its arguments in two deltas), then, given the
    tool's result, a text answer in three deltas."""

    def __init__(self) -> None:
        self.requests = 0

    async def __call__(
        self, messages: list[ModelMessage], info: AgentInfo
    ) -> AsyncIterator[str | DeltaToolCalls]:
        self.requests += 1
        if self.requests % 2 == 1:
            yield {0: DeltaToolCall(name="add", json_args='{"a": 1, ', tool_call_id="c1")}
            yield {0: DeltaToolCall(json_args='"b": 2}')}
        else:
            for token in ["The ", "sum ", "is 3"]:
                yield token


def build(script: Script, **kwargs: Any) -> Agent[None, str]:
    agent = Agent(FunctionModel(stream_function=script), name="adder", **kwargs)

    @agent.tool_plain
    def add(a: int, b: int) -> int:
        return a + b

    return agent


def events_json(events: list[Any]) -> list[Any]:
    """The events as JSON trees (each with its type's name); the run's result as `same()` in
    test_durable_parity.py compares it."""
    return [
        {"type": "AgentRunResultEvent", "result": run_json(e.result)}
        if isinstance(e, AgentRunResultEvent)
        else jsonable(e)
        for e in events
    ]


async def same_events(
    got: list[Any], plain: Callable[[], Awaitable[list[Any]]], runs: list[Any], what: str
) -> None:
    """`got` are the events of the plain runs `runs` (JSON), left out only where those
    differed (timestamps, ids: derived, not listed); `plain()` is one more plain run."""

    async def again() -> Any:
        return events_json(await plain())

    stable = (*STABLE, "content_delta", "args_delta", "type")
    await compare(events_json(got), runs, again, stable=stable, what=what)


async def plain_events(**kwargs: Any) -> list[Any]:
    async with build(Script(), **kwargs).run_stream_events("add") as events:
        return [e async for e in events]


async def test_run_stream_events_gives_the_plain_agents_events(store: Store) -> None:
    plain = await plain_events()
    runs = [events_json(plain), events_json(await plain_events())]
    script = Script()
    durable = DurableAgent(build(script), store=store)
    run_id = f"stream-{next(_ids)}"
    async with durable.run_stream_events("add", run_id=run_id) as events:
        got = [e async for e in events]
    assert [type(e).__name__ for e in got] == [type(e).__name__ for e in plain]
    await same_events(got, plain_events, runs, "the durable run's events")
    assert script.requests == 2
    history = await durable.history(run_id)
    assert [e.trigger for e in history].count("model_request") == 2
    assert isinstance(got[-1], AgentRunResultEvent) and got[-1].result.output == "The sum is 3"

    # Read back: the committed responses stream again, nothing is sent to the model.
    async with durable.run_stream_events(run_id=run_id) as events:
        again = [e async for e in events]
    assert script.requests == 2
    assert isinstance(again[-1], AgentRunResultEvent)
    assert again[-1].result.output == "The sum is 3"


async def test_event_stream_handler_and_a_streaming_capability(store: Store) -> None:
    seen: list[AgentStreamEvent] = []

    async def handler(ctx: RunContext[None], events: AsyncIterable[AgentStreamEvent]) -> None:
        async for event in events:
            seen.append(event)

    def collect(into: list[AgentStreamEvent]) -> Any:
        async def plain_handler(
            ctx: RunContext[None], events: AsyncIterable[AgentStreamEvent]
        ) -> None:
            async for event in events:
                into.append(event)

        return plain_handler

    async def plain_seen() -> list[AgentStreamEvent]:
        into: list[AgentStreamEvent] = []
        result = await build(Script()).run("add", event_stream_handler=collect(into))
        assert result.output == "The sum is 3"
        return into

    runs = [events_json(await plain_seen()), events_json(await plain_seen())]
    durable = DurableAgent(build(Script()), store=store)
    result = await durable.run("add", run_id=f"h-{next(_ids)}", event_stream_handler=handler)
    assert result.output == "The sum is 3"
    await same_events(seen, plain_seen, runs, "the events the durable run handed its handler")

    captured: list[AgentStreamEvent] = []

    async def capture(ctx: RunContext[None], events: AsyncIterable[AgentStreamEvent]) -> None:
        async for event in events:
            captured.append(event)

    with_capability = build(Script(), capabilities=[ProcessEventStream(capture)])
    durable = DurableAgent(with_capability, store=store)  # accepted now: it streams durably
    result = await durable.run("add", run_id=f"c-{next(_ids)}")
    assert result.output == "The sum is 3"
    await same_events(captured, plain_seen, runs, "the events the durable run's capability saw")


async def test_the_tokens_reach_the_live_channel(store: Store) -> None:
    durable = DurableAgent(build(Script()), store=store)
    run_id = f"live-{next(_ids)}"
    async with durable.run_stream_events("add", run_id=run_id) as events:
        async for _ in events:
            pass
    items = [i async for i in durable.watch(run_id)]
    text = "".join(i.text for i in items)
    assert text == "The sum is 3"
    calls = [i for i in items if i.kind == "tool_call"]
    assert calls and calls[0].data["tool"] == "add"
    ran = [(i.kind, i.data["tool"], i.data["call_id"]) for i in items if i.kind.startswith("tool_")]
    assert ran[-2:] == [("tool_started", "add", "c1"), ("tool_finished", "add", "c1")]
    assert next(i for i in items if i.kind == "tool_finished").data["ok"] is True
    committed = [i.event for i in items if i.event is not None]
    assert [e.seq for e in committed] == list(range(len(committed)))
    answer = [i for i in items if i.kind == "text"]
    request = next(e for e in reversed(committed) if e.trigger == "model_request")
    assert {i.seq for i in answer} == {request.seq}  # tagged with the step that committed them


async def walk(agent_run: AgentRun[Any, Any]) -> list[str]:
    """Walk an `Agent.iter` run node by node, streaming each model request's events; the
    kinds of the nodes and events seen, in order."""
    seen: list[str] = []
    async for node in agent_run:
        seen.append(type(node).__name__)
        if Agent.is_model_request_node(node):
            async with node.stream(agent_run.ctx) as events:
                seen.extend([type(e).__name__ async for e in events])
    return seen


async def plain_iter() -> tuple[list[str], Any]:
    """What a plain `Agent.iter` walks, and its result."""
    async with build(Script()).iter("add") as agent_run:
        seen = await walk(agent_run)
    return seen, agent_run.result


async def plain_stream() -> tuple[list[str], Any]:
    """What a plain `Agent.run_stream` gives: the text as it streams, and the result."""
    async with build(Script()).run_stream("add") as streamed:
        texts = [t async for t in streamed.stream_text(debounce_by=None)]
    return texts, streamed.result


@pytest.mark.parametrize("how", ["iter", "run_stream"])
async def test_iter_and_run_stream_are_the_plain_ones_and_durable(store: Store, how: str) -> None:
    plain_way = plain_iter if how == "iter" else plain_stream
    (seen, first), (_, second) = await plain_way(), await plain_way()
    runs = [run_json(first), run_json(second)]

    async def again() -> Any:
        return run_json((await plain_way())[1])

    script = Script()
    durable = DurableAgent(build(script), store=store)
    run_id = f"{how}-{next(_ids)}"

    async def durably(**kwargs: Any) -> tuple[list[str], Any]:
        if how == "iter":
            async with durable.iter(**kwargs) as agent_run:
                walked = await walk(agent_run)
            return walked, agent_run.result
        async with durable.run_stream(**kwargs) as streamed:
            texts = [t async for t in streamed.stream_text(debounce_by=None)]
        return texts, streamed.result

    got, result = await durably(user_prompt="add", run_id=run_id)
    assert got == seen
    await compare(run_json(result), runs, again, stable=STABLE, what=f"the durable {how}")
    assert script.requests == 2
    history = await durable.history(run_id)
    assert [e.trigger for e in history] == [
        "start", "model_request", "tool_call", "model_request", "output"
    ]  # fmt: skip
    assert history[-1].status == "done"

    # Read back: the same walk and result, nothing sent to the model (a committed response
    # streams again whole: its parts without deltas, its text at once).
    got_again, result_again = await durably(run_id=run_id)
    assert script.requests == 2
    if how == "iter":
        assert got_again == [kind for kind in seen if kind != "PartDeltaEvent"]
    else:
        assert got_again == seen[-1:]
    await compare(run_json(result_again), runs, again, stable=STABLE, what=f"{how} read back")


async def test_a_cancelled_run_ends_as_a_plain_one_and_stays_ended(store: Store) -> None:
    """`AgentRun.cancel()` ends the run as in plain pydantic-ai (the same exception); the
    durable run ends failed with it, and running it again sends nothing and names why."""
    from pydantic_ai.exceptions import RunCancelled

    from agents.errors import DurableRunFailed

    async def cancel_after_first_request(agent_run: AgentRun[Any, Any]) -> None:
        async for node in agent_run:
            if Agent.is_call_tools_node(node):
                agent_run.cancel()

    requests: list[int] = []

    def brain(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        requests.append(1)
        return ModelResponse(parts=[ToolCallPart("add", {"a": 1, "b": 2})])

    def agent() -> Agent[None, str]:
        plain = Agent(FunctionModel(brain), name="cancelled")

        @plain.tool_plain
        def add(a: int, b: int) -> int:
            return a + b

        return plain

    with pytest.raises(RunCancelled) as plain:
        async with agent().iter("add") as agent_run:
            await cancel_after_first_request(agent_run)
    requests.clear()
    durable = DurableAgent(agent(), store=store)
    run_id = f"cancel-{next(_ids)}"
    with pytest.raises(RunCancelled) as cancelled:
        async with durable.iter("add", run_id=run_id) as agent_run:
            await cancel_after_first_request(agent_run)
    assert str(cancelled.value) == str(plain.value)
    history = await durable.history(run_id)
    assert [(e.trigger, e.status) for e in history][-1] == ("fail", "failed")
    with pytest.raises(DurableRunFailed, match="RunCancelled"):
        await durable.run(run_id=run_id)
    assert len(requests) == 1
