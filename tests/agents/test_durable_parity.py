"""DurableAgent behaves as `Agent.run`: each case runs the same agent plainly and durably.

The scenarios follow pydantic-ai's own durable-execution suites (tests/test_temporal.py,
test_dbos.py, test_prefect.py in the pydantic-ai repository), offline with `TestModel` and
`FunctionModel`, on the embedded store and on a real Redis. `same()` compares the output
(type and value), the messages (every part, its content and order), the usage, and how often
each tool body ran: any difference fails the case. What varies from run to run (timestamps,
generated ids) is derived, not listed: the plain agent runs twice, and only the paths (field
locations) where those two runs differed are left out (tests/varying.py).
"""

from __future__ import annotations

import copy
import itertools
import os
import re
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from pydantic import BaseModel, JsonValue
from pydantic_ai import (
    Agent,
    BinaryContent,
    DeferredToolRequests,
    DeferredToolResults,
    DocumentUrl,
    ImageUrl,
    ModelRetry,
    NativeOutput,
    PromptedOutput,
    RunContext,
    TextOutput,
    ToolDenied,
    ToolOutput,
    ToolReturn,
)
from pydantic_ai.agent import AgentRunResult
from pydantic_ai.capabilities import (
    HandleDeferredToolCalls,
    Instrumentation,
    ProcessEventStream,
    ProcessHistory,
)
from pydantic_ai.exceptions import ApprovalRequired, UnexpectedModelBehavior, UsageLimitExceeded
from pydantic_ai.messages import (
    ModelMessage,
    ModelMessagesTypeAdapter,
    ModelRequest,
    ModelResponse,
    RetryPromptPart,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
)
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.models.test import TestModel
from pydantic_ai.tools import ToolApproved
from pydantic_ai.toolsets import AbstractToolset, ExternalToolset, FunctionToolset
from pydantic_ai.usage import UsageLimits

from agents import DurableAgent
from agents.durable._segments import JOURNALS_HANDLERS
from agents.errors import DurableRunFailed
from agents.steps._tool_engine import args_digest
from statemachine import DefinitionError, RunError
from storage import Store

from ..conftest import make_store
from ..varying import NotDeterministic, Reference, compare, jsonable, leaves
from ..varying import Path as Where

_ids = itertools.count()
ROOT = Path(__file__).resolve().parents[2]


@pytest_asyncio.fixture(params=["embedded", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    s = await make_store(request.param, request, tmp_path)
    yield s
    await s.close()


# The comparison -----------------------------------------------------------------------------
#
# What varies between two runs of one agent (timestamps, generated ids, durations; pydantic-ai
# adds such fields now and then) is not listed here: each case runs the plain agent twice, and
# the paths whose values differed between those runs, and only those, are left out of the
# comparison with the durable run (tests/varying.py).

STABLE = ("content", "args", "tool_name", "part_kind", "kind")
"""Fields the plain runs of a case must agree on: a case whose texts, arguments or tools
varied would be compared blind there, so it fails as not deterministic instead."""


def messages_json(messages: Sequence[ModelMessage]) -> list[Any]:
    """The messages as pydantic-ai serializes them (what a durable run stores)."""
    return ModelMessagesTypeAdapter.dump_python(list(messages), mode="json")  # type: ignore[no-any-return]


def run_json(result: AgentRunResult[Any]) -> dict[str, Any]:
    """What `same` compares of a run: its output, messages and usage."""
    return {
        "output": jsonable(result.output),
        "all_messages": messages_json(result.all_messages()),
        "new_messages": messages_json(result.new_messages()),
        "usage": jsonable(result.usage),
    }


@dataclass
class Ran:
    """How often each tool body ran."""

    counts: dict[str, int] = field(default_factory=dict)

    def __call__(self, name: str) -> None:
        self.counts[name] = self.counts.get(name, 0) + 1


@dataclass
class Plain:
    """A plain run, done the same way at least twice: what a durable run is compared with."""

    runs: list[AgentRunResult[Any]]
    again: Callable[[], Awaitable[AgentRunResult[Any]]]
    """One more run, done the same way."""

    @property
    def first(self) -> AgentRunResult[Any]:
        return self.runs[0]


async def plain_twice(run: Callable[[Ran], Awaitable[AgentRunResult[Any]]], ran: Ran) -> Plain:
    """`run(ran)`, then again: each later run must run the same tool bodies as the first."""
    first = await run(ran)

    async def again() -> AgentRunResult[Any]:
        more = Ran()
        result = await run(more)
        assert more.counts == ran.counts, "the plain runs ran different tools: not deterministic"
        return result

    return Plain([first, await again()], again)


async def same(plain: Plain, durable: AgentRunResult[Any], ran: Ran, ran_d: Ran) -> None:
    """The durable run is the plain one: the output (type and value), the messages (every
    part, its content and order), the usage, how often each tool body ran. Left out: only
    what differed between the plain runs."""
    assert ran_d.counts == ran.counts
    first = plain.first
    assert type(durable.output) is type(first.output)
    if all(r.output == first.output for r in plain.runs):
        assert durable.output == first.output
    if all(r.usage == first.usage for r in plain.runs):
        assert durable.usage == first.usage
    tree = run_json(durable)
    conversation_is_the_run(tree, durable.run_id, leaves(run_json(first)))
    runs = [run_json(r) for r in plain.runs]

    async def again() -> Any:
        plain.runs.append(await plain.again())
        return run_json(plain.runs[-1])

    await compare(tree, runs, again, stable=STABLE, what="the durable run")


def conversation_is_the_run(tree: dict[str, Any], run_id: str, plain: dict[Where, Any]) -> None:
    """A difference the README lists: the messages a durable run makes carry its run id as
    their `conversation_id`, where a plain run given a `message_history` continues that
    history's conversation. Checked here; then, for the rest of the comparison, each such
    message takes the plain run's `conversation_id`."""
    base = re.sub(r"/\d+$", "", run_id)  # a continuation runs as pydantic-ai run {run_id}/1
    ours = re.compile(rf"{re.escape(base)}(/\d+)?")
    for key in ("all_messages", "new_messages"):
        for i, message in enumerate(tree[key]):
            if "conversation_id" not in message or not ours.fullmatch(str(message["run_id"])):
                continue  # pydantic-ai without conversation ids, or a message of the history
            assert message["conversation_id"] == base, (
                f"{key}[{i}] is not in the run's conversation"
            )
            message["conversation_id"] = plain.get((key, i, "conversation_id"), base)


Build = Callable[[Ran], Agent[Any, Any]]


async def parity(
    build: Build, store: Store, prompt: Any = "go", **kwargs: Any
) -> tuple[AgentRunResult[Any], AgentRunResult[Any], DurableAgent[Any, Any], str]:
    """Run `build(...)`'s agent plainly (twice) and durably with the same arguments; compare."""
    ran, ran_d = Ran(), Ran()
    plain = await plain_twice(lambda r: build(r).run(prompt, **kwargs), ran)
    durable = DurableAgent(build(ran_d), store=store, name="parity")
    run_id = f"case-{next(_ids)}"
    result = await durable.run(prompt, run_id=run_id, **kwargs)
    await same(plain, result, ran, ran_d)
    kwargs.pop("message_history", None)
    again = await durable.run(run_id=run_id, **kwargs)  # read back: nothing runs again
    await same(plain, again, ran, ran_d)
    return plain.first, result, durable, run_id


async def test_same_fails_on_a_difference() -> None:
    a = await plain_twice(lambda r: Agent(TestModel(custom_output_text="a")).run("x"), Ran())
    b = await Agent(TestModel(custom_output_text="b")).run("x")
    with pytest.raises(AssertionError, match="'b' == 'a'"):
        await same(a, b, Ran(), Ran())
    with pytest.raises(AssertionError, match=r"\{'t': 2\} == \{'t': 1\}"):
        await same(a, a.first, Ran({"t": 1}), Ran({"t": 2}))


def two_calls(ran: Ran) -> Agent[None, str]:
    """Two tool calls with ids pydantic-ai generates (they differ from run to run), a text."""

    def brain(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        if len(messages) == 1:
            return ModelResponse(parts=[ToolCallPart("double", {"n": 1}),
                                        ToolCallPart("double", {"n": 2})])  # fmt: skip
        return ModelResponse(parts=[TextPart("doubled")])

    agent = Agent(FunctionModel(brain))

    @agent.tool_plain
    def double(n: int) -> int:
        ran("double")
        return 2 * n

    return agent


async def test_the_comparison_leaves_out_what_varies_and_nothing_else() -> None:
    plain = [run_json(await two_calls(Ran()).run("go")) for _ in range(3)]
    third = plain.pop()
    reference = Reference.of(*plain, stable=STABLE)
    while reference.differences(third) and len(plain) < 6:  # runs shared a duration by chance
        plain.append(run_json(await two_calls(Ran()).run("go")))
        reference = Reference.of(*plain, stable=STABLE)
    assert reference.differences(third) == []
    calls = third["all_messages"][1]["parts"]
    assert calls[0]["tool_call_id"] != calls[1]["tool_call_id"]  # generated: they vary
    varying = {p[-1] for p in reference.varying}
    assert {"timestamp", "tool_call_id", "run_id"} <= varying
    assert not varying & {"content", "args", "tool_name", "input_tokens", "output_tokens"}

    def changed(change: Callable[[dict[str, Any]], object]) -> list[str]:
        tree = copy.deepcopy(third)
        change(tree)
        return reference.differences(tree)

    def swap(items: list[Any], i: int, j: int) -> None:
        items[i], items[j] = items[j], items[i]

    messages = "all_messages"
    text = changed(lambda t: t[messages][-1]["parts"][0].update(content="tripled"))
    assert text == ["['all_messages'][3]['parts'][0]['content'] = 'tripled', not 'doubled'"]
    assert changed(lambda t: t[messages][1]["parts"].pop())  # a dropped part
    assert changed(lambda t: t[messages].pop(2))  # a dropped message
    assert changed(lambda t: t["new_messages"].append(t["new_messages"][-1]))  # an extra one
    assert changed(lambda t: swap(t[messages][1]["parts"], 0, 1))  # the calls' order
    assert changed(lambda t: swap(t[messages][2]["parts"], 0, 1))  # the returns' order
    assert changed(lambda t: t["usage"].update(input_tokens=t["usage"]["input_tokens"] + 1))
    assert changed(lambda t: t[messages][2]["parts"][0].update(content=3))  # a tool's result
    assert changed(lambda t: t.update(output="tripled"))

    def answer_the_other_call(t: dict[str, Any]) -> None:  # each return keeps its content
        a, b = t[messages][2]["parts"]
        a["tool_call_id"], b["tool_call_id"] = b["tool_call_id"], a["tool_call_id"]

    assert changed(answer_the_other_call)
    assert changed(lambda t: t[messages][0].update(timestamp=None))  # varies, but not so

    # An upstream release adds a field that varies (a new timestamp, an id): left out, and
    # nothing else is.
    def upstream_adds(tree: dict[str, Any]) -> dict[str, Any]:
        tree = copy.deepcopy(tree)
        for m in tree[messages]:
            m["future_stamp"] = uuid.uuid4().hex
        return tree

    newer = Reference.of(*map(upstream_adds, plain))
    assert newer.differences(upstream_adds(third)) == []
    assert newer.differences(third)  # the new field missing is a difference
    dropped = upstream_adds(third)
    dropped[messages][1]["parts"].pop()
    assert newer.differences(dropped)

    # Runs that differ in content or shape are no reference: nothing is left out.
    other = run_json(await Agent(TestModel(custom_output_text="b")).run("go"))
    with pytest.raises(NotDeterministic):
        Reference.of(run_json(await Agent(TestModel()).run("go")), other, stable=STABLE)
    with pytest.raises(NotDeterministic):
        Reference.of(third, run_json(await Agent(TestModel()).run("go")))


# The complex agent: deps, toolsets, parallel calls, dataclass output ---------------------------


@dataclass
class Deps:
    country: str


@dataclass
class Answer:
    city: str
    weather: str
    country: str


def complex_agent(ran: Ran, *more: AbstractToolset[Deps]) -> Agent[Deps, Answer]:
    extra = FunctionToolset[Deps](id="extra")

    @extra.tool
    def get_country(ctx: RunContext[Deps]) -> str:
        ran("get_country")
        return ctx.deps.country

    agent = Agent(
        TestModel(), deps_type=Deps, output_type=Answer, toolsets=[extra, *more], name="complex"
    )

    @agent.tool_plain
    def get_weather(city: str) -> str:
        ran("get_weather")
        return "sunny"

    @agent.tool
    def get_city(ctx: RunContext[Deps]) -> str:
        ran("get_city")
        return f"capital of {ctx.deps.country}"

    return agent


async def test_complex_agent(store: Store) -> None:
    await parity(complex_agent, store, "Weather in the capital?", deps=Deps("Mexico"))


async def test_complex_agent_with_an_mcp_server_over_stdio(store: Store, tmp_path: Path) -> None:
    from fastmcp.client.transports import StdioTransport
    from pydantic_ai.mcp import MCPToolset

    log = tmp_path / "mcp.log"
    root = ROOT
    agents = Ran()

    def build(ran: Ran) -> Agent[Deps, Answer]:
        agents("built")
        server = StdioTransport(
            command=sys.executable, args=["-m", "tests.agents.mcp_weather"], cwd=str(root),
            env={**os.environ, "MCP_LOG": str(log)},
            keep_alive=False,  # the server ends with each session: none outlives the test
        )  # fmt: skip
        # A generous start-up timeout: a busy machine can take seconds to start the server.
        return complex_agent(ran, MCPToolset(server, id="weather", init_timeout=60))

    await parity(build, store, "Weather in the capital?", deps=Deps("Mexico"))
    # The MCP tool ran once in each plain run (two, or more) and once durably (not again when
    # the run was read back).
    assert agents.counts["built"] >= 3
    assert log.read_text().splitlines() == ["a"] * agents.counts["built"]


async def test_override_deps_model_tools_and_toolsets(store: Store) -> None:
    ran, ran_d = Ran(), Ran()
    other = FunctionToolset[Deps](id="other")

    @other.tool
    def from_override(ctx: RunContext[Deps]) -> str:
        return f"override sees {ctx.deps.country} on {ctx.model.model_name}"

    def overriding_tool(ctx: RunContext[Deps]) -> str:
        return f"an override tool for {ctx.deps.country}"

    def go(agent: Agent[Deps, Answer]) -> Any:
        return agent.override(
            deps=Deps("Peru"), model=TestModel(seed=3), toolsets=[other], tools=[overriding_tool]
        )

    async def plainly(r: Ran) -> AgentRunResult[Any]:
        plain_agent = complex_agent(r)
        with go(plain_agent):
            return await plain_agent.run("x", deps=Deps("Chile"))

    plain = await plain_twice(plainly, ran)
    durable_agent = complex_agent(ran_d)
    durable = DurableAgent(durable_agent, store=store, name="override")
    with go(durable_agent):
        result = await durable.run("x", run_id=f"o-{next(_ids)}", deps=Deps("Chile"))
    await same(plain, result, ran, ran_d)
    assert "Peru" in str(messages_json(result.all_messages()))


class WeatherArgs(BaseModel):
    city: str


@dataclass
class Labelled:
    label: str
    answer: str


@dataclass
class Response:
    answers: list[Labelled]


def upstream_complex_agent(ran: Ran) -> Agent[Deps, Response]:
    """The shape of the complex agent in pydantic-ai's durable-execution suites: deps, a
    toolset with an id, a tool taking a model, instrumentation, a nested dataclass output."""

    async def get_country(ctx: RunContext[Deps]) -> str:
        ran("get_country")
        return ctx.deps.country

    def get_weather(args: WeatherArgs) -> str:
        ran("get_weather")
        return "sunny" if args.city == "a" else "unknown"

    return Agent(
        TestModel(), deps_type=Deps, output_type=Response, name="complex_agent",
        toolsets=[FunctionToolset[Deps](tools=[get_country], id="country")],
        tools=[get_weather], capabilities=[Instrumentation()],
    )  # fmt: skip


async def test_upstreams_complex_agent(store: Store) -> None:
    _, result, _, _ = await parity(upstream_complex_agent, store, "Tell me", deps=Deps("Mexico"))
    assert isinstance(result.output, Response)


class Unserializable:
    """Deps that cannot be stored (a lock): DurableAgent never stores deps."""

    def __init__(self) -> None:
        import threading

        self.lock = threading.Lock()
        self.country = "Peru"


async def test_unserializable_deps(store: Store) -> None:
    def build(ran: Ran) -> Agent[Unserializable, str]:
        agent = Agent(TestModel(), deps_type=Unserializable)

        @agent.tool
        def country(ctx: RunContext[Unserializable]) -> str:
            with ctx.deps.lock:
                return ctx.deps.country

        return agent

    await parity(build, store, deps=Unserializable())


def dynamic(ran: Ran) -> Agent[Deps, str]:
    agent = Agent(TestModel(), deps_type=Deps)

    @agent.toolset
    def per_country(ctx: RunContext[Deps]) -> FunctionToolset[Deps]:
        toolset = FunctionToolset[Deps]()

        @toolset.tool_plain(name=f"capital_of_{ctx.deps.country.lower()}")
        def capital() -> str:
            ran("capital")
            return f"the capital, at step {ctx.run_step}"

        return toolset

    return agent


async def test_dynamic_toolsets(store: Store) -> None:
    await parity(dynamic, store, deps=Deps("Peru"))


def failing_and_sequential(ran: Ran) -> Agent[None, str]:
    from pydantic_ai.exceptions import ToolFailed

    agent = Agent(TestModel())

    @agent.tool_plain
    def broken() -> str:
        ran("broken")
        raise ToolFailed("the disk is full")

    @agent.tool_plain(sequential=True)
    def one_at_a_time() -> str:
        ran("one_at_a_time")
        return "alone"

    return agent


async def test_tool_failed_and_sequential_tools(store: Store) -> None:
    _, result, _, _ = await parity(failing_and_sequential, store)
    assert "the disk is full" in str(messages_json(result.all_messages()))


# Retries, bad arguments, validators ---------------------------------------------------------


def retrying(ran: Ran) -> Agent[None, str]:
    def brain(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        retries = [p for m in messages if isinstance(m, ModelRequest) for p in m.parts
                   if getattr(p, "outcome", "") == "retried"]  # fmt: skip
        if len(retries) < 2:
            return ModelResponse(parts=[ToolCallPart("flaky", {"n": len(retries)})])
        if len(retries) == 2:
            return ModelResponse(parts=[ToolCallPart("flaky", {"n": "not a number"})])
        return ModelResponse(parts=[TextPart(f"after {len(retries)} retries")])

    agent = Agent(FunctionModel(brain), retries=5)

    @agent.tool_plain
    def flaky(n: int) -> str:
        ran("flaky")
        raise ModelRetry(f"try again ({n})")

    return agent


async def test_model_retries_and_invalid_tool_args(store: Store) -> None:
    await parity(retrying, store)


def always_retry(ran: Ran) -> Agent[None, str]:
    def brain(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        return ModelResponse(parts=[ToolCallPart("stubborn", {})])

    agent = Agent(FunctionModel(brain), name="stubborn")

    @agent.tool_plain(retries=2)
    def stubborn() -> str:
        ran("stubborn")
        raise ModelRetry("no")

    return agent


async def test_exhausted_tool_retries_fail_as_plain_does(store: Store) -> None:
    ran, ran_d = Ran(), Ran()
    with pytest.raises(UnexpectedModelBehavior) as plain:
        await always_retry(ran).run("go")
    durable = DurableAgent(always_retry(ran_d), store=store)
    with pytest.raises(UnexpectedModelBehavior) as ours:
        await durable.run("go", run_id="stubborn-1")
    assert str(ours.value) == str(plain.value)
    assert ran_d.counts == ran.counts == {"stubborn": 3}
    events = await durable.history("stubborn-1")
    assert sum(e.trigger == "model_request" for e in events) == 3
    assert events[-1].kind == "error" and events[-1].error is not None
    assert events[-1].error["type"] == "UnexpectedModelBehavior"
    with pytest.raises(UnexpectedModelBehavior):  # again: the same answer, nothing runs
        await durable.run(run_id="stubborn-1")
    assert ran_d.counts == {"stubborn": 3}


class Score(BaseModel):
    value: int


def validated(ran: Ran) -> Agent[None, Score]:
    def brain(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        n = sum(isinstance(m, ModelResponse) for m in messages)
        return ModelResponse(
            parts=[ToolCallPart(info.output_tools[0].name, {"value": [42, 11, 7][min(n, 2)]})]
        )

    agent = Agent(FunctionModel(brain), output_type=Score, retries={"output": 3})

    @agent.output_validator
    def small(v: Score) -> Score:
        ran("validator")
        if v.value > 10:
            raise ModelRetry("too big")
        return v

    return agent


async def test_output_validators(store: Store) -> None:
    ran, ran_d = Ran(), Ran()
    plain = await plain_twice(lambda r: validated(r).run("go"), ran)
    result = await DurableAgent(validated(ran_d), store=store, name="v").run(
        "go", run_id=f"v{next(_ids)}"
    )
    await same(plain, result, ran, ran_d)


# Outputs --------------------------------------------------------------------------------------


class Foo(BaseModel):
    foo: str


class Bar(BaseModel):
    bar: int


def union(ran: Ran) -> Agent[None, Foo | Bar]:
    def brain(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        bar = next(t for t in info.output_tools if "Bar" in t.name)
        return ModelResponse(parts=[ToolCallPart(bar.name, {"bar": 3})])

    return Agent(FunctionModel(brain), output_type=[Foo, Bar])


async def test_union_output_keeps_the_type_the_model_chose(store: Store) -> None:
    _, result, _, _ = await parity(union, store)
    assert isinstance(result.output, Bar)


def summarize(foo: str) -> dict[str, str]:
    """An output function."""
    return {"summary": foo.upper()}


def output_function(ran: Ran) -> Agent[None, Any]:
    calls = itertools.count()

    def summary(foo: str) -> Foo:
        """An output function: the model's first answer is sent back once (ModelRetry)."""
        ran("summary")
        if next(calls) == 0:
            raise ModelRetry("shorter, please")
        return Foo(foo=foo.upper())

    return Agent(TestModel(), output_type=[summarize, summary])


async def test_output_functions_run_once_and_not_again_when_the_run_is_read_back(
    store: Store,
) -> None:
    def build(ran: Ran) -> Agent[None, Any]:
        agent = output_function(ran)

        def brain(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
            tool = next(t for t in info.output_tools if "summary" in t.name)
            return ModelResponse(parts=[ToolCallPart(tool.name, {"foo": "x"})])

        return Agent(FunctionModel(brain), output_type=agent.output_type)

    _, result, _, run_id = await parity(build, store)  # read back once inside
    assert result.output == Foo(foo="X")
    ran_again = Ran()
    again = await DurableAgent(build(ran_again), store=store, name="parity").run(run_id=run_id)
    assert (again.output, ran_again.counts) == (Foo(foo="X"), {})
    events = await store.history(run_id)
    outputs = [e.output for e in events if e.trigger == "output_call"]
    assert [("retry" in o, o.get("result")) for o in outputs if isinstance(o, dict)] == [
        (True, None), (False, {"foo": "X"})
    ]  # fmt: skip
    await parity(lambda ran: Agent(TestModel(), output_type=summarize), store)


def shout(text: str) -> str:
    """A text output function."""
    return text.upper()


@pytest.mark.parametrize("kind", ["native", "prompted", "tool", "text"])
async def test_native_prompted_tool_and_text_outputs(store: Store, kind: str) -> None:
    def build(ran: Ran) -> Agent[None, Any]:
        def brain(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
            if info.output_tools:
                return ModelResponse(parts=[ToolCallPart(info.output_tools[0].name, {"foo": "x"})])
            return ModelResponse(parts=[TextPart('{"foo": "x"}')])

        spec: Any = {
            "native": NativeOutput(Foo), "prompted": PromptedOutput(Foo),
            "tool": ToolOutput(Foo, name="final"), "text": TextOutput(shout),
        }[kind]  # fmt: skip
        return Agent(FunctionModel(brain), output_type=spec)

    await parity(build, store)


def falling_back(ran: Ran) -> Agent[None, str]:
    from pydantic_ai.exceptions import ModelHTTPError
    from pydantic_ai.models.fallback import FallbackModel

    def down(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        ran("down")
        raise ModelHTTPError(500, "down", "unavailable")

    return Agent(FallbackModel(FunctionModel(down), TestModel(custom_output_text="from backup")))


async def test_a_fallback_model_falls_back_inside_one_request(store: Store) -> None:
    _, result, durable, run_id = await parity(falling_back, store)
    assert result.output == "from backup"
    events = await durable.history(run_id)
    assert [e.trigger for e in events[1:]] == ["model_request", "output"]


# Tool returns and multimodal content ------------------------------------------------------------


def rich_returns(ran: Ran) -> Agent[None, str]:
    def brain(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        done = [p for m in messages if isinstance(m, ModelRequest) for p in m.parts
                if isinstance(p, ToolReturnPart)]  # fmt: skip
        if not done:
            calls = [ToolCallPart("picture", {}, tool_call_id="p"),
                     ToolCallPart("document", {}, tool_call_id="d")]  # fmt: skip
            return ModelResponse(parts=calls)
        seen = [m for m in messages if isinstance(m, ModelRequest)][-1]
        return ModelResponse(parts=[TextPart(f"{len(seen.parts)} parts")])

    agent = Agent(FunctionModel(brain))

    @agent.tool_plain
    def picture() -> ToolReturn:
        ran("picture")
        return ToolReturn(
            return_value={"width": 1},
            content=["the picture:", BinaryContent(b"\x89PNG", media_type="image/png")],
            metadata={"source": "camera"},
        )

    @agent.tool_plain
    def document() -> DocumentUrl:
        ran("document")
        return DocumentUrl(url="https://example.com/report.pdf")

    return agent


async def test_tool_return_with_metadata_and_content_and_files(store: Store) -> None:
    _, result, _, _ = await parity(rich_returns, store)
    parts = [p for m in result.all_messages() for p in m.parts if isinstance(p, ToolReturnPart)]
    assert parts[0].metadata == {"source": "camera"}
    assert isinstance(parts[1].content, DocumentUrl)


async def test_multimodal_prompts(store: Store) -> None:
    prompt = ["What is this?", ImageUrl(url="https://example.com/a.png"),
              BinaryContent(b"%PDF", media_type="application/pdf")]  # fmt: skip
    await parity(lambda ran: Agent(TestModel()), store, prompt)


# Run options ------------------------------------------------------------------------------------


async def test_usage_limits(store: Store) -> None:
    limits = UsageLimits(request_limit=1)
    with pytest.raises(UsageLimitExceeded) as plain:
        await complex_agent(Ran()).run("x", deps=Deps("Peru"), usage_limits=limits)
    durable = DurableAgent(complex_agent(Ran()), store=store)
    with pytest.raises(UsageLimitExceeded) as ours:
        await durable.run("x", run_id="limits", deps=Deps("Peru"), usage_limits=limits)
    assert str(ours.value) == str(plain.value)


async def test_metadata_model_settings_instructions_and_run_toolsets(store: Store) -> None:
    extra = FunctionToolset[None](id="runtime")

    @extra.tool
    def runtime_tool(ctx: RunContext[None]) -> str:
        return f"metadata {ctx.metadata}"

    _, result, _, _ = await parity(
        lambda ran: Agent(TestModel()), store,
        metadata={"tenant": "acme"}, model_settings={"temperature": 0.1},
        instructions="Be brief.", toolsets=[extra],
    )  # fmt: skip
    assert result.metadata == {"tenant": "acme"}
    assert "tenant" in str(messages_json(result.all_messages()))


async def test_message_history_continuation(store: Store) -> None:
    first = await Agent(TestModel()).run("first")
    await parity(lambda ran: Agent(TestModel()), store, "second",
                 message_history=first.all_messages())  # fmt: skip


def step_dependent(ran: Ran) -> Agent[None, str]:
    asked = itertools.count(1)

    def brain(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        if next(asked) < 3:
            return ModelResponse(parts=[ToolCallPart("tick", {})])
        return ModelResponse(
            parts=[
                TextPart(
                    f"saw {len(messages)} messages, tools {[t.name for t in info.function_tools]}"
                )
            ]
        )

    def keep_last_three(messages: list[ModelMessage]) -> list[ModelMessage]:
        return messages[-3:]

    agent: Agent[None, str] = Agent(
        FunctionModel(brain), deps_type=type(None), capabilities=[ProcessHistory(keep_last_three)]
    )

    @agent.instructions
    def per_step(ctx: RunContext[None]) -> str:
        return f"step {ctx.run_step}, retry {ctx.retry}, requests so far {ctx.usage.requests}"

    @agent.tool(prepare=lambda ctx, d: _if(ctx.run_step < 3, d))
    def tick(ctx: RunContext[None]) -> str:
        ran("tick")
        return f"tick at step {ctx.run_step} ({ctx.tool_name}, {ctx.retry}/{ctx.max_retries})"

    return agent


async def _if(cond: bool, d: Any) -> Any:
    return d if cond else None


async def test_history_processors_dynamic_instructions_and_step_dependent_tools(
    store: Store,
) -> None:
    await parity(step_dependent, store)


# Approvals ------------------------------------------------------------------------------------


def gated(
    ran: Ran, *, handler: Any = None, plain_output: bool = False
) -> Agent[None, str | DeferredToolRequests]:
    def brain(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        done = [p for m in messages if isinstance(m, ModelRequest) for p in m.parts
                if isinstance(p, ToolReturnPart | RetryPromptPart)]  # fmt: skip
        if not done:
            return ModelResponse(parts=[
                ToolCallPart("delete_file", {"path": "a.txt"}, tool_call_id="del-a"),
                ToolCallPart("read_file", {"path": "b.txt"}, tool_call_id="read-b"),
            ])  # fmt: skip
        return ModelResponse(parts=[TextPart("; ".join(str(p.content) for p in done))])

    caps = [HandleDeferredToolCalls(handler=handler)] if handler else []
    output: Any = str if plain_output else [str, DeferredToolRequests]
    agent = Agent(FunctionModel(brain), output_type=output, capabilities=caps)

    @agent.tool_plain(requires_approval=True)
    def delete_file(path: str) -> str:
        ran(f"delete_file {path}")
        return f"deleted {path}"

    @agent.tool
    def read_file(ctx: RunContext[None], path: str) -> str:
        ran("read_file")
        if not ctx.tool_call_approved and path == "secret":
            raise ApprovalRequired()
        return f"read {path}"

    return agent


async def test_nobody_approves_nothing_runs(store: Store) -> None:
    _, result, _, run_id = await parity(gated, store)
    assert isinstance(result.output, DeferredToolRequests)
    assert [c.tool_call_id for c in result.output.approvals] == ["del-a"]
    record = await store.load(run_id)
    assert record is not None and record.status == "waiting"


async def test_approved_and_denied_by_a_handler_in_the_run(store: Store) -> None:
    def approve(ctx: RunContext[None], r: DeferredToolRequests) -> DeferredToolResults:
        return r.build_results(approve_all=True)

    def deny(ctx: RunContext[None], r: DeferredToolRequests) -> DeferredToolResults:
        return DeferredToolResults(
            approvals={c.tool_call_id: ToolDenied("no") for c in r.approvals}
        )

    _, ok, _, _ = await parity(lambda ran: gated(ran, handler=approve), store)
    assert "deleted a.txt" in str(ok.output)
    _, denied, _, _ = await parity(lambda ran: gated(ran, handler=deny), store)
    assert "deleted" not in str(denied.output)


async def test_a_handler_in_the_run_with_a_plain_output_type_is_asked_once(
    store: Store,
) -> None:
    asked: list[list[str]] = []

    def approve(ctx: RunContext[None], r: DeferredToolRequests) -> DeferredToolResults:
        asked.append([c.tool_call_id for c in r.approvals])
        return r.build_results(approve_all=True)

    _, ok, durable, run_id = await parity(
        lambda ran: gated(ran, handler=approve, plain_output=True), store
    )
    assert "deleted a.txt" in str(ok.output)
    again = await durable.run(run_id=run_id)
    assert again.output == ok.output
    if not JOURNALS_HANDLERS:  # pydantic-ai < 2.78: asked again on replay, as its engines do
        return
    # Asked by the two plain runs, then once by the durable run, and not when read back
    # (`parity` read it back once too).
    assert asked == [["del-a"]] * 3
    decisions = [e.output for e in await store.history(run_id) if e.trigger == "decision"]
    assert len(decisions) == 1 and isinstance(decisions[0], dict)
    results = decisions[0]["results"]
    assert isinstance(results, dict) and isinstance(results["approvals"], dict)
    assert list(results["approvals"]) == ["del-a"]


ANSWERS = [
    ("deferred_tool_results", True),
    ("deferred_tool_results", ToolApproved(override_args={"path": "b.txt"})),
    ("deferred_tool_results", ToolDenied("not that one")),
    ("deferred_tool_results", False),
    ("approve", True),
    ("approve", ToolApproved(override_args={"path": "b.txt"})),
    ("approve", ToolDenied("not that one")),
]


@pytest.mark.parametrize(("how", "answer"), ANSWERS,
                         ids=[f"{h}-{i}" for i, (h, _) in enumerate(ANSWERS)])  # fmt: skip
async def test_continuing_after_an_answer(store: Store, answer: Any, how: str) -> None:
    ran, ran_d = Ran(), Ran()
    results = DeferredToolResults(approvals={"del-a": answer})

    async def answered(r: Ran) -> AgentRunResult[Any]:
        first = await gated(r).run("go")
        return await gated(r).run(
            message_history=first.all_messages(), deferred_tool_results=results
        )

    first = await plain_twice(lambda r: gated(r).run("go"), Ran())
    assert isinstance(first.first.output, DeferredToolRequests)
    plain = await plain_twice(answered, ran)

    durable = DurableAgent(gated(ran_d), store=store, name="gated")
    run_id = f"gate-{next(_ids)}"
    parked = await durable.run("go", run_id=run_id)
    await same(first, parked, Ran(), Ran())
    if how == "approve":
        edited = answer.override_args if isinstance(answer, ToolApproved) else None
        denied = answer.message if isinstance(answer, ToolDenied) else None
        await durable.approve(run_id, "del-a", args=edited, deny=denied)
        result = await durable.run(run_id=run_id)
    else:
        result = await durable.run(run_id=run_id, deferred_tool_results=results)
    await same(plain, result, ran, ran_d)
    assert result.run_id == f"{run_id}/1"  # pydantic-ai's run of the continuation
    again = await durable.run(run_id=run_id)
    await same(plain, again, ran, ran_d)
    events = await durable.history(run_id)
    answers = [e for e in events if e.trigger == "answer"]
    assert len(answers) == 1 and isinstance(answers[0].output, dict)
    if answer is True or isinstance(answer, ToolApproved):
        assert isinstance(answers[0].output["digest"], str)
        assert (
            ran_d.counts.get("delete_file b.txt" if answer is not True else "delete_file a.txt")
            == 1
        )
    else:
        assert not any(name.startswith("delete_file") for name in ran_d.counts)


async def test_a_plain_run_that_deferred_goes_on_durably(store: Store) -> None:
    ran, ran_d = Ran(), Ran()
    first = await gated(Ran()).run("go")
    results = DeferredToolResults(approvals={"del-a": True})
    history = first.all_messages()
    plain = await plain_twice(
        lambda r: gated(r).run(message_history=history, deferred_tool_results=results), ran
    )
    durable = DurableAgent(gated(ran_d), store=store, name="gated")
    result = await durable.run(
        message_history=history, deferred_tool_results=results, run_id="from-plain"
    )
    await same(plain, result, ran, ran_d)
    again = await durable.run(run_id="from-plain")
    await same(plain, again, ran, ran_d)
    assert ran_d.counts == {"delete_file a.txt": 1}
    with pytest.raises(RunError, match="no call 'del-a' is waiting"):  # nothing asked for it
        await DurableAgent(gated(Ran()), store=store, name="g2").run(
            "go", run_id="fresh", deferred_tool_results=results
        )
    plainly = DurableAgent(Agent(TestModel()), store=store, name="plainly")
    await plainly.run("go", run_id="no-deferrals")
    with pytest.raises(RunError, match="takes no deferred_tool_results"):
        await plainly.run(run_id="no-deferrals", deferred_tool_results=results)


async def test_approve_names_the_calls_that_wait(store: Store) -> None:
    durable = DurableAgent(gated(Ran()), store=store, name="gated")
    await durable.run("go", run_id="names")
    with pytest.raises(RunError, match=r"waiting: del-a \(delete_file\)"):
        await durable.approve("names", "nope")


async def test_a_tool_needing_approval_needs_deferred_tool_requests_in_the_output() -> None:
    agent = Agent(TestModel(), name="x")

    @agent.tool_plain(requires_approval=True)
    def drop() -> None: ...

    with pytest.raises(DefinitionError, match=r"output_type=\[YourOutput, DeferredToolRequests\]"):
        DurableAgent(agent, store=None)  # type: ignore[arg-type]


async def test_run_time_external_toolsets(store: Store) -> None:
    from pydantic_ai.tools import ToolDefinition

    external = ExternalToolset([ToolDefinition(name="ask_user")], id="external")
    spec: Any = [str, DeferredToolRequests]
    first = await plain_twice(
        lambda r: Agent(TestModel(), output_type=spec).run("go", toolsets=[external]), Ran()
    )
    assert isinstance(first.first.output, DeferredToolRequests)
    durable = DurableAgent(Agent(TestModel(), output_type=spec), store=store, name="rt-ext")
    parked = await durable.run("go", run_id=f"rt-{next(_ids)}", toolsets=[external])
    await same(first, parked, Ran(), Ran())


async def test_external_toolsets(store: Store) -> None:
    from pydantic_ai.tools import ToolDefinition

    external = ExternalToolset([ToolDefinition(name="ask_user", parameters_json_schema={
        "type": "object", "properties": {"q": {"type": "string"}}})])  # fmt: skip

    def build(ran: Ran) -> Agent[None, str | DeferredToolRequests]:
        return Agent(TestModel(), toolsets=[external], output_type=[str, DeferredToolRequests])

    def results_for(first: AgentRunResult[Any]) -> DeferredToolResults:
        assert isinstance(first.output, DeferredToolRequests)
        return DeferredToolResults(calls={first.output.calls[0].tool_call_id: "blue"})

    async def answered(r: Ran) -> AgentRunResult[Any]:
        first = await build(r).run("go")
        return await build(r).run(
            message_history=first.all_messages(), deferred_tool_results=results_for(first)
        )

    ran, ran_d = Ran(), Ran()
    first = await plain_twice(lambda r: build(r).run("go"), Ran())
    results = results_for(first.first)
    plain = await plain_twice(answered, ran)
    durable = DurableAgent(build(ran_d), store=store, name="ext")
    run_id = f"ext-{next(_ids)}"
    parked = await durable.run("go", run_id=run_id)
    await same(first, parked, Ran(), ran_d)
    result = await durable.run(run_id=run_id, deferred_tool_results=results)
    await same(plain, result, ran, ran_d)


# Identity -------------------------------------------------------------------------------------


async def test_a_durable_agent_needs_a_name_and_keeps_to_its_runs(store: Store) -> None:
    with pytest.raises(DefinitionError, match="stable name"):
        DurableAgent(Agent(TestModel()), store=store)
    a = DurableAgent(Agent(TestModel(custom_output_text="A")), store=store, name="a")
    b = DurableAgent(Agent(TestModel(custom_output_text="B")), store=store, name="b")
    await a.run("x", run_id="mine")
    with pytest.raises(RunError, match="belongs to 'a'"):
        await b.run("x", run_id="mine")
    with pytest.raises(RunError, match="another prompt"):
        await a.run("y", run_id="mine")
    same_name = Agent(TestModel(), output_type=Score)
    with pytest.raises(RunError, match="started by another agent named 'a'"):
        await DurableAgent(same_name, store=store, name="a").run(run_id="mine")


async def test_one_pydantic_ai_run_id_per_durable_run(store: Store) -> None:
    _, result, _, run_id = await parity(complex_agent, store, "x", deps=Deps("Peru"))
    ids = {getattr(m, "run_id", None) for m in result.all_messages()}
    assert ids == {run_id} and result.run_id == run_id


async def test_a_call_runs_only_with_the_arguments_approved(store: Store) -> None:
    ran = Ran()
    durable = DurableAgent(gated(ran), store=store, name="gated")
    await durable.run("go", run_id="tamper")
    run = await durable.machine.resume(store, "tamper")
    forged: dict[str, JsonValue] = {
        "segment": 0,
        "tool_call_id": "del-a",
        "kind": "approval",
        "digest": "0" * 64,
    }
    event = await run.send("answer", forged)  # an approval of other arguments than the model's
    await run.release()
    assert isinstance(event.output, dict) and "digest does not match" in str(
        event.output["refused"]
    )
    still = await durable.run(run_id="tamper")  # it answered nothing: the call still waits
    assert isinstance(still.output, DeferredToolRequests)
    assert "delete_file a.txt" not in ran.counts


async def test_the_gate_refuses_a_call_whose_arguments_are_not_the_approved_ones(
    store: Store,
) -> None:
    from agents.durable._journal import Journal
    from agents.durable._steps import Answer, DurableMemory

    durable = DurableAgent(Agent(TestModel()), store=store, name="gate")
    run = await durable.machine.start(store, DurableMemory(), run_id="gate")
    journal = Journal(run=run, events=[])
    approved: dict[str, Any] = {"path": "a.txt"}
    journal.answers_in = {
        "c": Answer(segment=0, tool_call_id="c", kind="approval", digest=args_digest(approved)),
        "d": Answer(segment=0, tool_call_id="d", kind="approval", approved=False),
    }
    ran: list[dict[str, Any]] = []

    async def handler(args: dict[str, Any]) -> str:
        ran.append(args)
        return "ran"

    async def call(call_id: str, args: dict[str, Any]) -> Any:
        part = ToolCallPart("delete_file", args, tool_call_id=call_id)
        ctx: Any = None
        tool_def: Any = None
        return await journal.wrap_tool_execute(
            ctx, call=part, tool_def=tool_def, args=args, handler=handler
        )

    assert await call("c", approved) == "ran"
    with pytest.raises(RunError, match="other than the ones approved"):
        await call("c", {"path": "everything"})
    with pytest.raises(RunError, match="was denied"):
        await call("d", approved)
    assert ran == [approved]


async def test_a_tool_raising_approval_required_waits_for_its_approval(store: Store) -> None:
    def build(ran: Ran) -> Agent[None, str | DeferredToolRequests]:
        agent = gated(ran)
        agent._function_toolset.tools.pop("delete_file")  # only the dynamic gate is left
        return agent

    def secret(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        if not any(isinstance(p, ToolReturnPart) for m in messages for p in m.parts):
            return ModelResponse(
                parts=[ToolCallPart("read_file", {"path": "secret"}, tool_call_id="s")]
            )
        return ModelResponse(parts=[TextPart("done")])

    def on_secret(ran: Ran) -> Agent[None, str | DeferredToolRequests]:
        agent = build(ran)
        agent._model = FunctionModel(secret)
        return agent

    results = DeferredToolResults(approvals={"s": True})

    async def answered(r: Ran) -> AgentRunResult[Any]:
        agent = on_secret(r)
        first = await agent.run("go")
        return await agent.run(message_history=first.all_messages(), deferred_tool_results=results)

    ran, ran_d = Ran(), Ran()
    first = await plain_twice(lambda r: on_secret(r).run("go"), Ran())
    assert isinstance(first.first.output, DeferredToolRequests)
    plain = await plain_twice(answered, ran)
    durable = DurableAgent(on_secret(ran_d), store=store, name="secret")
    parked = await durable.run("go", run_id="secret")
    await durable.approve("secret", "s")
    result = await durable.run(run_id="secret")
    await same(first, parked, Ran(), Ran())
    await same(plain, result, ran, ran_d)
    assert ran_d.counts == {"read_file": 2}  # once to raise ApprovalRequired, once approved


# RunContext -----------------------------------------------------------------------------------


def introspective(ran: Ran) -> Agent[Deps, str]:
    def brain(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        returns = [
            p for m in messages for p in m.parts if isinstance(p, ToolReturnPart | RetryPromptPart)
        ]
        if len(returns) < 3:
            return ModelResponse(parts=[ToolCallPart("look", {"n": len(returns)})])
        return ModelResponse(parts=[TextPart("seen")])

    agent = Agent(FunctionModel(brain, model_name="introspective"), deps_type=Deps,
                  name="introspective")  # fmt: skip

    @agent.instructions
    def about(ctx: RunContext[Deps]) -> str:
        return f"step {ctx.run_step} of {ctx.agent.name if ctx.agent else None}"

    @agent.tool(retries=3)
    def look(ctx: RunContext[Deps], n: int) -> str:
        ran("look")
        if n == 1 and ctx.retry == 0:
            raise ModelRetry("once more")
        agent = ctx.agent.name if ctx.agent else None
        return (
            f"deps={ctx.deps.country} model={ctx.model.model_name} agent={agent}"
            f" step={ctx.run_step} requests={ctx.usage.requests}"
            f" retry={ctx.retry}/{ctx.max_retries}"
            f" metadata={ctx.metadata} prompt={ctx.prompt} messages={len(ctx.messages)}"
            f" tool={ctx.tool_name} approved={ctx.tool_call_approved}"
        )

    return agent


async def test_tools_and_instructions_see_the_run_context_of_a_plain_run(store: Store) -> None:
    _, result, _, _ = await parity(introspective, store, "look around", deps=Deps("Peru"),
                                   metadata={"k": "v"})  # fmt: skip
    text = str(messages_json(result.all_messages()))
    assert "agent=introspective" in text and "retry=1/3" in text and "step=" in text


async def test_under_override_tools_see_the_override(store: Store) -> None:
    ran, ran_d = Ran(), Ran()
    other = FunctionModel(introspective(Ran()).model.function, model_name="other")  # type: ignore[union-attr]

    async def plainly(r: Ran) -> AgentRunResult[Any]:
        plain_agent = introspective(r)
        with plain_agent.override(deps=Deps("Chile"), model=other):
            return await plain_agent.run("x", deps=Deps("Peru"))

    plain = await plain_twice(plainly, ran)
    durable_agent = introspective(ran_d)
    durable = DurableAgent(durable_agent, store=store)
    with durable_agent.override(deps=Deps("Chile"), model=other):
        result = await durable.run("x", run_id=f"ov-{next(_ids)}", deps=Deps("Peru"))
    await same(plain, result, ran, ran_d)
    assert "deps=Chile model=other" in str(messages_json(result.all_messages()))


# Across processes -----------------------------------------------------------------------------


class Stop(BaseException):
    """Stands for the process dying: nothing catches it."""


def stop_after(n: int) -> Callable[[Any], None]:
    seen = itertools.count(1)

    def hook(event: Any) -> None:
        if event.trigger == "model_request" and next(seen) == n:
            raise Stop

    return hook


async def test_an_on_event_callback_that_raises_reaches_the_caller_and_the_run_goes_on(
    store: Store,
) -> None:
    class Oops(Exception):
        pass

    def oops(event: Any) -> None:
        raise Oops(event.trigger)

    ran = Ran()
    durable = DurableAgent(complex_agent(ran), store=store)
    with pytest.raises(Oops, match="model_request"):
        await durable.run("x", run_id="oops", deps=Deps("Peru"), on_event=oops)
    record = await store.load("oops")
    assert record is not None and record.status == "running"
    result = await durable.run(run_id="oops", deps=Deps("Peru"))
    plain = await complex_agent(Ran()).run("x", deps=Deps("Peru"))
    assert result.output == plain.output


async def test_usage_limits_count_the_requests_committed_before_a_crash(store: Store) -> None:
    limits = UsageLimits(request_limit=2)
    brain_calls: list[int] = []

    def build() -> Agent[None, str]:
        def brain(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
            brain_calls.append(1)
            return ModelResponse(parts=[ToolCallPart("again", {})])

        agent = Agent(FunctionModel(brain), name="looping")

        @agent.tool_plain
        def again() -> str:
            return "again"

        return agent

    with pytest.raises(UsageLimitExceeded) as plain:
        await build().run("go", usage_limits=limits)
    plain_calls = len(brain_calls)
    durable = DurableAgent(build(), store=store)
    with pytest.raises(Stop):
        await durable.run("go", run_id="limited", usage_limits=limits, on_event=stop_after(2))
    with pytest.raises(UsageLimitExceeded) as ours:  # in "another process": the 2 requests count
        await durable.run(run_id="limited", usage_limits=limits)
    assert str(ours.value) == str(plain.value)
    assert len(brain_calls) == 2 * plain_calls


async def test_a_run_driven_meanwhile_by_another_process_is_replayed_not_repeated(
    store: Store,
) -> None:
    ran = Ran()
    other: list[DurableAgent[Deps, Answer]] = []

    def build(first: bool) -> Agent[Deps, Answer]:
        agent = complex_agent(ran)

        @agent.instructions
        async def meanwhile(ctx: RunContext[Deps]) -> str:
            if first and other and ctx.run_step == 1:
                # This process replays; another one drives the run to its end before it commits.
                await other.pop().run(run_id="race", deps=ctx.deps)
            return "Be quick."

        return agent

    durable = DurableAgent(build(False), store=store)
    with pytest.raises(Stop):
        await durable.run("x", run_id="race", deps=Deps("Peru"), on_event=stop_after(1))
    other.append(DurableAgent(build(False), store=store))
    result = await DurableAgent(build(True), store=store).run(run_id="race", deps=Deps("Peru"))
    plain_ran = Ran()
    plain = await complex_agent(plain_ran).run("x", deps=Deps("Peru"))
    assert result.output == plain.output
    assert ran.counts == plain_ran.counts  # every tool once, though two processes drove it
    assert not other  # the other process did drive it
    triggers = [e.trigger for e in await store.history("race")]
    assert triggers.count("output") == 1 and triggers.count("tool_call") == 3


# The differences from Agent.run the README lists, each shown ------------------------------------


async def test_difference_code_between_operations_runs_again_when_a_run_is_replayed(
    store: Store,
) -> None:
    ran = Ran()
    durable = DurableAgent(validated(ran), store=store, name="v")
    await durable.run("go", run_id="replayed")
    assert ran.counts == {"validator": 3}
    await durable.run(run_id="replayed")  # read back: no model request, the validator again
    assert ran.counts == {"validator": 6}


async def test_difference_tool_calls_of_one_response_run_one_after_another(store: Store) -> None:
    import asyncio

    both: list[str] = []

    def build(ran: Ran) -> Agent[None, str]:
        def brain(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
            if any(isinstance(p, ToolReturnPart) for m in messages for p in m.parts):
                return ModelResponse(parts=[TextPart(",".join(both))])
            return ModelResponse(
                parts=[ToolCallPart("slow", {"n": 1}), ToolCallPart("slow", {"n": 2})]
            )

        agent = Agent(FunctionModel(brain))

        @agent.tool_plain
        async def slow(n: int) -> int:
            both.append(f"start {n}")
            await asyncio.sleep(0)
            both.append(f"end {n}")
            return n

        return agent

    await build(Ran()).run("go")
    assert both == ["start 1", "start 2", "end 1", "end 2"]  # plain: side by side
    both.clear()
    await DurableAgent(build(Ran()), store=store, name="seq").run("go", run_id="seq")
    assert both == ["start 1", "end 1", "start 2", "end 2"]  # durable: in the model's order


@dataclass
class Point:
    x: int


async def test_difference_a_tool_result_comes_back_as_stored(store: Store) -> None:
    def build(ran: Ran) -> Agent[None, str]:
        agent = Agent(TestModel())

        @agent.tool_plain
        def where() -> Point:
            return Point(3)

        return agent

    plain, result, _, _ = await parity(build, store)  # the same to the model (JSON)
    returned = [
        p.content for m in result.all_messages() for p in m.parts if isinstance(p, ToolReturnPart)
    ]
    assert returned == [{"x": 3}]
    assert [p.content for m in plain.all_messages() for p in m.parts
            if isinstance(p, ToolReturnPart)] == [Point(3)]  # fmt: skip


async def test_streaming_is_durable(store: Store) -> None:
    """More in test_durable_streaming.py: the events are the plain run's."""
    seen: list[Any] = []

    async def handler(ctx: RunContext[None], events: Any) -> None:
        async for event in events:
            seen.append(event)

    def build(ran: Ran) -> Agent[None, str]:
        return Agent(TestModel(), name="streams", capabilities=[ProcessEventStream(handler)])

    await parity(build, store)
    assert seen


async def test_difference_a_failed_run_read_back_raises_durable_run_failed(store: Store) -> None:
    def build(ran: Ran) -> Agent[None, str]:
        agent = Agent(TestModel(), name="boom")

        @agent.tool_plain
        def explode() -> str:
            ran("explode")
            raise ValueError("boom")

        return agent

    ran = Ran()
    durable = DurableAgent(build(ran), store=store)
    with pytest.raises(ValueError, match="boom"):  # as Agent.run raises it
        await durable.run("go", run_id="boom")
    with pytest.raises(DurableRunFailed, match="ValueError: boom"):
        await durable.run(run_id="boom")
    assert ran.counts == {"explode": 1}


def two_gated(ran: Ran) -> Agent[None, str | DeferredToolRequests]:
    def brain(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        done = [p for m in messages for p in m.parts if isinstance(p, ToolReturnPart)]
        if not done:
            return ModelResponse(parts=[
                ToolCallPart("delete_file", {"path": "a"}, tool_call_id="del-a"),
                ToolCallPart("delete_file", {"path": "b"}, tool_call_id="del-b"),
            ])  # fmt: skip
        return ModelResponse(parts=[TextPart("; ".join(str(p.content) for p in done))])

    spec: Any = [str, DeferredToolRequests]
    agent = Agent(FunctionModel(brain), output_type=spec, name="two")

    @agent.tool_plain(requires_approval=True)
    def delete_file(path: str) -> str:
        ran(f"delete_file {path}")
        return f"deleted {path}"

    return agent


async def test_answers_one_at_a_time_and_the_same_answer_twice_counts_once(store: Store) -> None:
    ran = Ran()
    durable = DurableAgent(two_gated(ran), store=store)
    await durable.run("go", run_id="two")
    await durable.approve("two", "del-a")
    record = await store.load("two")
    assert record is not None and record.status == "waiting"  # del-b still waits
    waiting = await durable.run(run_id="two")  # nothing runs while one call waits
    assert isinstance(waiting.output, DeferredToolRequests) and ran.counts == {}
    run = await durable.machine.resume(store, "two")
    again: dict[str, JsonValue] = {
        "segment": 0, "tool_call_id": "del-a", "kind": "approval", "digest": "x"
    }  # fmt: skip
    event = await run.send("answer", again)  # a second approver, too late
    await run.release()
    assert isinstance(event.output, dict) and event.output["duplicate"] is True
    with pytest.raises(RunError, match=r"waiting: del-b \(delete_file\)"):
        await durable.approve("two", "del-a")
    await durable.approve("two", "del-b", deny="keep b")
    result = await durable.run(run_id="two")
    assert ran.counts == {"delete_file a": 1}
    assert "keep b" in str(result.output)


async def test_approve_refuses_what_is_not_a_waiting_durable_agent_run(store: Store) -> None:
    from agents._operations import approve_tool_call
    from statemachine import RunNotFound

    with pytest.raises(RunNotFound):
        await approve_tool_call(store, "nobody", "c1")
    durable = DurableAgent(Agent(TestModel()), store=store, name="quick")
    await durable.run("go", run_id="finished")
    with pytest.raises(RunError, match="is done in state 'done': nothing to approve"):
        await approve_tool_call(store, "finished", "c1")
    from tests.agents.ticket_agent import ticket

    await ticket.start(store, {}, run_id="a-ticket")
    with pytest.raises(RunError, match="not a DurableAgent run"):
        await approve_tool_call(store, "a-ticket", "c1")


@pytest.mark.parametrize("strategy", ["early", "exhaustive"])
async def test_an_output_call_beside_function_calls(store: Store, strategy: Any) -> None:
    def build(ran: Ran) -> Agent[None, Score]:
        def brain(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
            out = info.output_tools[0].name
            return ModelResponse(parts=[
                ToolCallPart("note", {"text": "first"}, tool_call_id="n1"),
                ToolCallPart(out, {"value": 5}, tool_call_id="o1"),
                ToolCallPart("note", {"text": "second"}, tool_call_id="n2"),
            ])  # fmt: skip

        agent = Agent(FunctionModel(brain), output_type=Score, end_strategy=strategy)

        @agent.tool_plain
        def note(text: str) -> str:
            ran(f"note {text}")
            return text

        return agent

    plain, _, durable, run_id = await parity(build, store)
    ran_calls = sum(  # a call whose body ran returns its text (pydantic-ai words the others)
        1 for m in plain.all_messages() for p in m.parts
        if isinstance(p, ToolReturnPart) and p.tool_name == "note"
        and p.content in ("first", "second")
    )  # fmt: skip
    triggers = [e.trigger for e in await durable.history(run_id)]
    assert triggers.count("tool_call") == ran_calls  # each function call its own transition
    assert triggers.count("model_request") == 1
    assert ran_calls == (2 if strategy == "exhaustive" else 0)


async def test_difference_an_error_a_capability_would_recover_from_fails_the_run(
    store: Store,
) -> None:
    from pydantic_ai.capabilities import AbstractCapability

    @dataclass
    class Forgiving(AbstractCapability[Any]):
        async def on_tool_execute_error(self, ctx: Any, *, call: Any, tool_def: Any, args: Any,
                                        error: Exception) -> Any:  # fmt: skip
            return f"recovered from {error}"

    def build(ran: Ran) -> Agent[None, str]:
        agent = Agent(TestModel(), name="forgiving", capabilities=[Forgiving()])

        @agent.tool_plain
        def explode() -> str:
            ran("explode")
            raise ValueError("boom")

        return agent

    plain = await build(Ran()).run("go")
    assert "recovered from boom" in str(messages_json(plain.all_messages()))
    durable = DurableAgent(build(Ran()), store=store)
    with pytest.raises(DurableRunFailed, match="ValueError: boom"):
        await durable.run("go", run_id="forgiving")


@pytest.mark.skipif(
    not hasattr(RunContext, "submit_output"),
    reason="RunContext.submit_output is newer than this pydantic-ai (2.78 has it)",
)
async def test_difference_submit_output_from_a_tool_is_refused_as_on_pydantic_ais_engines(
    store: Store,
) -> None:
    """A replay answers a committed tool call from the history without running it, so an output
    the tool submitted would not be submitted again: pydantic-ai refuses `submit_output` inside
    a durable unit (its own engines do the same), and the run ends with that error."""
    from pydantic_ai.exceptions import UserError

    def build(ran: Ran) -> Agent[None, Foo]:
        agent: Agent[None, Foo] = Agent(TestModel(), output_type=Foo)

        @agent.tool
        async def finish(ctx: RunContext[None], x: int) -> str:
            ran("finish")
            await ctx.submit_output("final_result", {"foo": "submitted"})
            return "ok"

        return agent

    plain = await build(Ran()).run("go")
    assert plain.output == Foo(foo="submitted")
    durable = DurableAgent(build(Ran()), store=store, name="submits")
    with pytest.raises(UserError, match="submit_output"):
        await durable.run("go", run_id=f"submit-{next(_ids)}")
