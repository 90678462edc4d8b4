"""pydantic-ai's own spans inside ours: with its instrumentation on, its `chat` span nests
under the llm step's transition span (state-table agents) and under the model request's
(DurableAgent), its `execute_tool` under the tool call's; a DurableAgent run continued in
another call (a new Run, as in another process) is the same trace, and what it replays is
not reported again."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pydantic import BaseModel
from pydantic_ai import Agent as PydanticAgent
from pydantic_ai import DeferredToolRequests
from pydantic_ai.capabilities import Instrumentation
from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    ModelResponse,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
)
from pydantic_ai.models.function import AgentInfo, FunctionModel

from agents import Agent, DurableAgent, llm, tool
from storage import Store

from ..tracing import global_provider, span_dict


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    with global_provider() as exporter:
        yield exporter


def tree(exporter: InMemorySpanExporter) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """The finished spans, and each one's parent's name by span name (last one wins)."""
    got = [span_dict(s) for s in exporter.get_finished_spans()]
    names = {s["span_id"]: s["name"] for s in got}
    return got, {s["name"]: names.get(s["parent_id"] or "", "") for s in got}


def ancestors(got: list[dict[str, Any]], span: dict[str, Any]) -> list[str]:
    by_id = {s["span_id"]: s for s in got}
    names = []
    while span["parent_id"] in by_id:
        span = by_id[span["parent_id"]]
        names.append(span["name"])
    return names


class Notes(BaseModel):
    count: int = 0
    summary: str = ""


def answer(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    return ModelResponse(parts=[TextPart("three notes")])


async def test_chat_spans_nest_under_the_llm_transition(
    store: Store, spans: InMemorySpanExporter
) -> None:
    notes = Agent(
        name="notes", memory=Notes, model=FunctionModel(answer), initial="new", final=["done"],
        transitions=[
            tool("count", "new", "counted", lambda m: 3, into="count"),
            llm("summarize", "counted", "done", prompt=lambda m: f"{m.count} notes",
                into="summary"),
        ],
    )  # fmt: skip
    PydanticAgent.instrument_all(True)
    try:
        run = await notes.run(store, Notes(), run_id="notes-1")
    finally:
        PydanticAgent.instrument_all(False)
    assert run.memory.summary == "three notes"
    got, _ = tree(spans)
    chat = next(s for s in got if s["name"].startswith("chat "))
    assert ancestors(got, chat) == ["invoke_agent agent", "llm summarize", "run notes"]
    assert len({s["trace_id"] for s in got}) == 1


def gated_agent() -> PydanticAgent[None, str | DeferredToolRequests]:
    def brain(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        done = [p for m in messages if isinstance(m, ModelRequest) for p in m.parts
                if isinstance(p, ToolReturnPart)]  # fmt: skip
        if not done:
            return ModelResponse(parts=[
                ToolCallPart("delete_file", {"path": "a.txt"}, tool_call_id="del-a"),
                ToolCallPart("read_file", {"path": "b.txt"}, tool_call_id="read-b"),
            ])  # fmt: skip
        return ModelResponse(parts=[TextPart("; ".join(str(p.content) for p in done))])

    agent = PydanticAgent(
        FunctionModel(brain), name="files", output_type=[str, DeferredToolRequests],
        capabilities=[Instrumentation()],  # pydantic-ai 2's Agent(instrument=True)
    )  # fmt: skip

    @agent.tool_plain(requires_approval=True)
    def delete_file(path: str) -> str:
        return f"deleted {path}"

    @agent.tool_plain
    def read_file(path: str) -> str:
        return f"read {path}"

    return agent


async def test_a_durable_run_is_one_trace_with_pydantic_ais_spans_inside_its_transitions(
    store: Store, spans: InMemorySpanExporter
) -> None:
    durable = DurableAgent(gated_agent(), store=store)
    parked = await durable.run("tidy up", run_id="files-1")
    assert isinstance(parked.output, DeferredToolRequests)
    await durable.approve("files-1", "del-a")
    # Another DurableAgent object: nothing of the first call's is in memory, as in another
    # process; the first model request and the read are replayed, not reported again.
    result = await DurableAgent(gated_agent(), store=store).run(run_id="files-1")
    assert result.output == "deleted a.txt; read b.txt"

    got, _ = tree(spans)
    record = await store.load("files-1")
    assert record is not None
    _, trace_id, root_id, _ = record.trace.split("-")
    assert {s["trace_id"] for s in got} == {trace_id}
    history = await store.history("files-1")
    ours = [s for s in got if "agentfsm.trigger" in s["attributes"]]
    assert sorted(s["attributes"]["agentfsm.seq"] for s in ours) == [e.seq for e in history[1:]]
    by_name: dict[str, list[dict[str, Any]]] = {}
    for s in got:
        by_name.setdefault(s["name"], []).append(s)
    assert len(by_name["run files"]) == 1 and by_name["run files"][0]["span_id"] == root_id
    assert len(by_name["llm model_request"]) == 2  # one per request sent: none replayed
    for chat in by_name["chat function:brain:"]:
        assert ancestors(got, chat)[:2] == ["llm model_request", "invoke_agent files"]
        assert ancestors(got, chat)[-1] == "run files"
    executed = [s for s in got if s["name"].startswith("execute_tool ")]
    # each tool ran once (read_file in the first call, delete_file once approved)
    assert [s["name"] for s in executed] == ["execute_tool read_file", "execute_tool delete_file"]
    for s in executed:
        assert ancestors(got, s)[:2] == ["tool tool_call", "invoke_agent files"]
    assert ancestors(got, by_name["wait answer"][0]) == ["run files"]  # approve(): no agent
    invocations = by_name["invoke_agent files"]
    assert len(invocations) == 2  # one per call that ran something
    assert all(s["parent_id"] == root_id for s in invocations)
