"""LLM steps with tools: each tool call the model makes is a committed transition of its own."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, JsonValue
from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    ModelResponse,
    RetryPromptPart,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
)
from pydantic_ai.models.function import AgentInfo, FunctionModel

from agents import Agent, llm, tool_calls
from agents.examples.researcher import LIBRARY, Research, researcher
from statemachine import DefinitionError
from storage import Store

from ..keys import plain

Brain = Callable[[list[ModelMessage], AgentInfo], ModelResponse]


def returns(messages: list[ModelMessage]) -> list[ToolReturnPart | RetryPromptPart]:
    return [
        p for m in messages if isinstance(m, ModelRequest) for p in m.parts
        if isinstance(p, ToolReturnPart | RetryPromptPart)
    ]  # fmt: skip


def lookup(key: str) -> str:
    """Look a key up."""
    if key == "boom":
        raise ConnectionError("the lookup service is down")
    return key.upper()


def agent_with(brain: Brain, *, think_visits: int = 5, retries: int = 0) -> Agent[Research]:
    return Agent(
        name="asker", memory=Research, model=FunctionModel(brain), initial="asked",
        final=["answered"], on_error="failed",
        transitions=[
            llm("think", ["asked", "observed"], "answered", prompt=lambda m: m.question,
                tools=[lookup], on_tool_calls="acting", into="answer", max_visits=think_visits),
            tool_calls("act", "acting", "observed", tools=[lookup], retries=retries),
        ],
    )  # fmt: skip


def call(tool: str, args: dict[str, Any], call_id: str) -> ModelResponse:
    return ModelResponse(parts=[ToolCallPart(tool, args, tool_call_id=call_id)])


async def test_the_researcher_searches_reads_in_parallel_and_answers(store: Store) -> None:
    run = await researcher.start(store, Research(question="Why use leases?"), run_id="r")
    await run.until_done()
    assert (run.state, run.status) == ("answered", "done")
    assert run.memory.answer == f"From the library: {LIBRARY['leases']}"
    history = await run.history()
    assert [(e.trigger, e.dest) for e in history[1:]] == [
        ("think", "acting"), ("act", "observed"), ("think", "acting"), ("act", "observed"),
        ("think", "answered"),
    ]  # fmt: skip
    think = history[1]
    assert think.output == {
        "tool_calls": [
            {"tool_call_id": "call-search", "tool": "search", "args": {"query": "Why use leases?"}}
        ]
    }
    act = history[2]
    assert plain(act.key) == "r:1:act:call-search"
    assert act.output == {
        "tool_call_id": "call-search", "tool": "search", "args": {"query": "Why use leases?"},
        "result": ["leases"],
    }  # fmt: skip
    # The follow-up request sent the results, not the prompt again.
    messages: Any = history[3].messages  # JSON
    assert [m["kind"] for m in messages] == ["request", "response"]
    assert [p["part_kind"] for p in messages[0]["parts"]] == ["tool-return"]
    assert history[-1].usage is not None and history[-1].usage["requests"] == 1


async def test_parallel_calls_run_one_per_transition_in_the_models_order(store: Store) -> None:
    def brain(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        done = returns(messages)
        if not done:
            return ModelResponse(parts=[
                ToolCallPart("lookup", {"key": k}, tool_call_id=f"c-{k}") for k in "zab"
            ])  # fmt: skip
        return ModelResponse(parts=[TextPart(",".join(str(p.content) for p in done))])

    run = await agent_with(brain).start(store, Research(question="q"), run_id="p")
    await run.until_done()
    assert run.memory.answer == "Z,A,B"
    acts = [e for e in await run.history() if e.trigger == "act"]
    assert [plain(e.key) for e in acts] == ["p:1:act:c-z", "p:2:act:c-a", "p:3:act:c-b"]
    assert [e.dest for e in acts] == ["acting", "acting", "observed"]


async def test_a_watcher_sees_each_tool_call_start_and_finish(store: Store) -> None:
    def brain(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        if not returns(messages):
            return ModelResponse(parts=[
                ToolCallPart("lookup", {"key": k}, tool_call_id=f"c-{k}") for k in ("a", "boom")
            ])  # fmt: skip
        return ModelResponse(parts=[TextPart("done")])

    run = await agent_with(brain).start(store, Research(question="q"), run_id="w")
    await run.until_done()
    seen = [(i.kind, i.data.get("call_id"), i.data.get("ok")) async for i in run.watch()
            if i.kind.startswith("tool_") or i.kind == "failed"]  # fmt: skip
    assert seen == [
        ("tool_started", "c-a", None), ("tool_finished", "c-a", True),
        ("tool_started", "c-boom", None), ("failed", None, None),  # it raised: the try failed
    ]  # fmt: skip
    assert (run.state, run.status) == ("failed", "failed")  # the agent's failure state


@pytest.mark.parametrize(
    ("bad_call", "feedback"),
    [
        (("lookup", {"kee": "x"}), "invalid arguments for 'lookup'"),
        (("lookup", {"key": 42}), "invalid arguments for 'lookup'"),
    ],
)
async def test_a_bad_call_is_fed_back_to_the_model_which_corrects_it(
    store: Store, bad_call: tuple[str, dict[str, Any]], feedback: str
) -> None:
    def brain(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        done = returns(messages)
        if not done:
            return call(*bad_call, "c1")
        if len(done) == 1:
            return call("lookup", {"key": "x"}, "c2")
        return ModelResponse(parts=[TextPart(str(done[-1].content))])

    run = await agent_with(brain).start(store, Research(question="q"), run_id="b")
    await run.until_done()
    assert (run.status, run.memory.answer) == ("done", "X")
    first = next(e for e in await run.history() if e.trigger == "act")
    assert isinstance(first.output, dict) and feedback in str(first.output["retry"])


async def test_an_unknown_tool_is_refused_inside_the_model_request(store: Store) -> None:
    """pydantic-ai answers a call of a tool it was not offered itself, in the same request."""

    def brain(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        done = returns(messages)
        if not done:
            return call("fetch", {"key": "x"}, "c1")
        if len(done) == 1:
            return call("lookup", {"key": "x"}, "c2")
        return ModelResponse(parts=[TextPart(str(done[-1].content))])

    run = await agent_with(brain).start(store, Research(question="q"), run_id="u")
    await run.until_done()
    assert (run.status, run.memory.answer) == ("done", "X")
    think = (await run.history())[1]
    assert think.usage is not None and think.usage["requests"] == 2
    assert "fetch" in str(think.messages[2])
    assert [plain(e.key) for e in await run.history() if e.trigger == "act"] == ["u:1:act:c2"]


async def test_a_tool_that_keeps_failing_sends_the_run_to_the_failure_state(store: Store) -> None:
    def brain(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        return call("lookup", {"key": "boom"}, "c1")

    run = await agent_with(brain, retries=1).start(store, Research(question="q"), run_id="f")
    await run.until_done()
    assert (run.state, run.status) == ("failed", "failed")
    last = (await run.history())[-1]
    assert last.kind == "error" and last.error is not None
    assert (last.error["type"], last.error["attempt"]) == ("ConnectionError", 2)
    assert plain(last.key) == "f:1:act:failed:2"


async def test_a_model_that_never_stops_calling_tools_ends_at_the_loop_limit(
    store: Store,
) -> None:
    calls = 0

    def brain(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        nonlocal calls
        calls += 1
        return call("lookup", {"key": f"k{calls}"}, f"c{calls}")

    run = await agent_with(brain, think_visits=3).start(store, Research(question="q"))
    await run.until_done()
    assert (run.state, run.status, calls) == ("failed", "failed", 3)
    last = (await run.history())[-1]
    assert last.error is not None
    assert "'think' reached its limit of 3 visits" in str(last.error["message"])


def test_tools_are_checked_when_declared() -> None:
    def star(*keys: str) -> str:
        return ""

    with pytest.raises(DefinitionError, match="tools= and on_tool_calls= go together"):
        llm("think", "a", "b", prompt="p", tools=[lookup])
    with pytest.raises(DefinitionError, match="needs history=True"):
        llm("think", "a", "b", prompt="p", tools=[lookup], on_tool_calls="c", history=False)
    with pytest.raises(DefinitionError, match="route name 'tool_calls' is reserved"):
        llm("think", "a", None, prompt="p", tools=[lookup], on_tool_calls="c",
            routes={"tool_calls": "b"})  # fmt: skip
    with pytest.raises(DefinitionError, match="parameter 'keys' must be a plain keyword"):
        tool_calls("act", "c", "a", tools=[star])
    with pytest.raises(DefinitionError, match="two tools are named 'lookup'"):
        tool_calls("act", "c", "a", tools=[lookup, lookup])
    with pytest.raises(DefinitionError, match="give the tools"):
        tool_calls("act", "c", "a", tools=[])


def test_the_graph_shows_the_tool_loop() -> None:
    text = researcher.graph().mermaid()
    for edge in (
        'question -->|"think · LLM<br/>route: answer"| answered',
        'question -->|"think · LLM<br/>route: tool_calls"| acting',
        'acting -->|"act · tool<br/>route: more"| acting',
        'acting -->|"act · tool<br/>route: done"| observed',
    ):
        assert edge in text, text


class Other(BaseModel):
    n: int = 0


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text()
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)  # fmt: skip


@example(value={"kind": "tool-return", "x": 1}, metadata=None, how="plain")  # ToolReturn's kind
@settings(max_examples=60, deadline=None)
@given(
    value=_json_values,
    metadata=_json_values,
    how=st.sampled_from(["plain", "tool_return", "retry", "failed"]),
)
def test_a_recorded_tool_outcome_replays_as_the_call_ended(
    value: JsonValue, metadata: JsonValue, how: str
) -> None:
    """What a tool call did, recorded as JSON (stored, read back) and replayed, is what it did:
    the same value, the same `ToolReturn`, or the same answer to the model raised again."""
    import pydantic_core
    from pydantic_ai import ModelRetry, ToolReturn
    from pydantic_ai.exceptions import ToolFailed

    from agents.steps._tool_engine import record_outcome, replay_outcome

    async def call() -> Any:
        if how == "retry":
            raise ModelRetry(str(value))
        if how == "failed":
            raise ToolFailed(str(value))
        if how == "tool_return":
            return ToolReturn(return_value=value, metadata=metadata)
        return value

    outcome = asyncio.run(record_outcome(call()))
    stored = pydantic_core.from_json(pydantic_core.to_json(outcome))  # as a store gives it back
    if how == "retry":
        with pytest.raises(ModelRetry) as retry:
            replay_outcome(stored)
        assert retry.value.message == str(value)
        return
    if how == "failed":
        with pytest.raises(ToolFailed) as failed:
            replay_outcome(stored)
        assert failed.value.message == str(value)
        return
    replayed = replay_outcome(stored)
    if how == "tool_return":
        assert isinstance(replayed, ToolReturn)
        assert (replayed.return_value, replayed.metadata) == (value, metadata)
    else:
        assert replayed == value
