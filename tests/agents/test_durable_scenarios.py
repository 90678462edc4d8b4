"""More of pydantic-ai's durable-execution scenarios (its tests/test_temporal.py, test_dbos.py,
test_prefect.py), plain vs DurableAgent as in test_durable_parity.py: agents delegating with the
run's usage, cancelling from a tool, toolsets and tools that capabilities contribute or reveal,
MCP toolsets built per run, native tools, image output, prompt and tool-return content, per-run
and per-step models, event handlers, `enqueue` (responses the provider suspends:
test_durable_continuations.py). docs/durable-scenarios.md names each upstream test and the test
that covers it."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from pydantic_ai import (
    Agent,
    BinaryContent,
    BinaryImage,
    CancellationToken,
    DeferredToolRequests,
    DocumentUrl,
    ModelSelectionContext,
    RunContext,
    TextContent,
    ToolReturn,
    UploadedFile,
    WebSearchTool,
)
from pydantic_ai.agent import AgentRunResult
from pydantic_ai.capabilities import (
    AbstractCapability,
    Capability,
    DynamicCapability,
    ProcessEventStream,
    SelectModel,
    Toolset,
    WebSearch,
)
from pydantic_ai.exceptions import (
    RunCancelled,
    UnexpectedModelBehavior,
    UserError,
)
from pydantic_ai.messages import (
    AgentStreamEvent,
    FilePart,
    FunctionToolCallEvent,
    ModelMessage,
    ModelRequest,
    ModelResponse,
    NativeToolCallPart,
    NativeToolReturnPart,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
    UserPromptPart,
)
from pydantic_ai.models import Model
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.models.test import TestModel
from pydantic_ai.profiles import ModelProfile
from pydantic_ai.tools import ToolDefinition
from pydantic_ai.toolsets import FunctionToolset

from agents import DurableAgent
from agents.errors import DurableRunFailed
from storage import Store

from ..conftest import make_store
from .test_durable_parity import Deps, Ran, parity, plain_twice, same

_ids = itertools.count()


@pytest_asyncio.fixture(params=["embedded", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    s = await make_store(request.param, request, tmp_path)
    yield s
    await s.close()


# Agents calling agents -----------------------------------------------------------------------


def delegating(ran: Ran) -> Agent[None, str]:
    """A tool runs another agent with the run's usage (pydantic-ai's documented delegation)."""
    helper = Agent(TestModel(custom_output_text="from the helper"), name="helper")

    def brain(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        if len(messages) == 1:
            return ModelResponse(parts=[ToolCallPart("delegate", {})])
        return ModelResponse(parts=[TextPart("delegated")])

    agent: Agent[None, str] = Agent(FunctionModel(brain), name="delegating")

    @agent.tool
    async def delegate(ctx: RunContext[None]) -> str:
        ran("delegate")
        return (await helper.run("help", usage=ctx.usage)).output

    return agent


async def test_an_agent_delegating_with_the_runs_usage(store: Store) -> None:
    _, result, _, _ = await parity(delegating, store)
    assert result.usage.requests == 3


def sync_delegating(ran: Ran) -> Agent[None, str]:
    helper = Agent(TestModel(), name="helper")

    def brain(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        return ModelResponse(parts=[ToolCallPart("delegate", {})])

    agent = Agent(FunctionModel(brain), name="sync-delegating")

    @agent.tool_plain
    def delegate() -> str:
        ran("delegate")
        return helper.run_sync("hello").output

    return agent


async def test_run_sync_inside_a_sync_tool_is_refused_as_plain(store: Store) -> None:
    with pytest.raises(UserError) as plain:
        await sync_delegating(Ran()).run("go")
    with pytest.raises(UserError) as ours:
        await DurableAgent(sync_delegating(Ran()), store=store).run("go", run_id=f"s{next(_ids)}")
    assert str(ours.value) == str(plain.value)


# Cancelling from a tool -----------------------------------------------------------------------


def cancelling(ran: Ran) -> Agent[None, str]:
    async def cancel(ctx: RunContext[None]) -> str:
        ran("cancel")
        ctx.cancel()
        return "completed before the cancellation took effect"

    return Agent(TestModel(), name="cancelling", tools=[cancel])


# On Redis the cancellation often lands while the tool call's commit waits for its answer:
# the commit settles first (statemachine._commit), then the run ends as plain.
@pytest.mark.parametrize("store", ["embedded", "redis"], indirect=True)
async def test_a_tool_cancelling_the_run_ends_it_as_plain(store: Store) -> None:
    ran, ran_d = Ran(), Ran()
    with pytest.raises(RunCancelled) as plain:
        await cancelling(ran).run("run")
    durable = DurableAgent(cancelling(ran_d), store=store)
    run_id = f"cancel-{next(_ids)}"
    with pytest.raises(RunCancelled) as ours:
        await durable.run("run", run_id=run_id)
    assert str(ours.value) == str(plain.value)
    assert ran_d.counts == ran.counts == {"cancel": 1}
    with pytest.raises(DurableRunFailed, match="RunCancelled"):
        await durable.run(run_id=run_id)
    assert ran_d.counts == {"cancel": 1}


# Toolsets a capability contributes -------------------------------------------------------------


def contributed(ran: Ran) -> Agent[None, str]:
    tools = FunctionToolset[None](id="contributed")

    @tools.tool_plain
    def lookup(key: str) -> str:
        ran("lookup")
        return f"value of {key}"

    return Agent(TestModel(), name="contributed", capabilities=[Toolset(tools)])


async def test_a_toolset_a_capability_contributes(store: Store) -> None:
    _, _, _, _ = await parity(contributed, store)


# Image output ---------------------------------------------------------------------------------


def drawing(ran: Ran, size: int = 0) -> Agent[None, BinaryImage]:
    def brain(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        ran("draw")
        data = b"\x89PNG\r\n\x1a\n" + b"\0" * size + b" axolotl"
        image = BinaryImage(data=data, media_type="image/png")
        return ModelResponse(parts=[FilePart(content=image)])

    model = FunctionModel(brain, profile=ModelProfile(supports_image_output=True))
    return Agent(model, output_type=BinaryImage, name="drawing")


@pytest.mark.parametrize("size", [0, 3 * 1024 * 1024], ids=["small", "large"])
async def test_image_output(store: Store, size: int) -> None:
    plain, result, _, _ = await parity(lambda ran: drawing(ran, size), store, "Draw an axolotl")
    assert isinstance(result.output, BinaryImage) and result.output.data.endswith(b"axolotl")
    assert result.output.identifier == plain.output.identifier


# A model given per run -------------------------------------------------------------------------


async def test_a_model_given_to_the_run(store: Store) -> None:
    def build(ran: Ran) -> Agent[None, str]:
        return Agent(TestModel(custom_output_text="agent's"), name="per-run")

    _, result, _, _ = await parity(build, store, model=TestModel(custom_output_text="run's"))
    assert result.output == "run's"


# An event stream handler of the agent's, under iter ----------------------------------------------


async def test_an_event_stream_handler_of_the_agents_under_iter(store: Store) -> None:
    def build(seen: list[str]) -> Agent[None, str]:
        async def handler(ctx: RunContext[None], stream: AsyncIterable[AgentStreamEvent]) -> None:
            async for event in stream:
                seen.append(type(event).__name__)

        agent = Agent(TestModel(), name="handled", capabilities=[ProcessEventStream(handler)])

        @agent.tool_plain
        def same_tool() -> str:
            return "same"

        return agent

    plain: list[str] = []
    async with build(plain).iter("same") as agent_run:
        async for _ in agent_run:
            pass
    plain_output = agent_run.result.output if agent_run.result else None
    ours: list[str] = []
    async with DurableAgent(build(ours), store=store).iter(
        "same", run_id=f"iter-{next(_ids)}"
    ) as durable_run:
        async for _ in durable_run:
            pass
    assert durable_run.result is not None and durable_run.result.output == plain_output
    assert ours == plain
    assert plain.count(FunctionToolCallEvent.__name__) == 1


# Content: media types, uploaded files, text content, nested and large tool returns -------------


async def test_prompt_content_keeps_its_kinds_and_media_types(store: Store) -> None:
    prompt = [
        "What are these?",
        DocumentUrl(url="https://example.com/report", media_type="application/pdf"),
        UploadedFile(file_id="file-abc", provider_name="openai", media_type="text/csv"),
        TextContent("kept as TextContent", metadata={"preserved": True}),
    ]
    _, result, _, _ = await parity(lambda ran: Agent(TestModel(), name="content"), store, prompt)
    first = result.all_messages()[0]
    assert isinstance(first, ModelRequest) and isinstance(first.parts[0], UserPromptPart)
    assert first.parts[0].content == prompt


def returning(size: int) -> Any:
    def build(ran: Ran) -> Agent[None, str]:
        def brain(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
            if len(messages) == 1:
                return ModelResponse(parts=[ToolCallPart("look", {})])
            return ModelResponse(parts=[TextPart("looked")])

        agent = Agent(FunctionModel(brain), name="returning")

        @agent.tool_plain
        def look() -> dict[str, Any]:
            ran("look")
            picture = BinaryContent(b"\x89PNG" + b"\0" * size, media_type="image/png")
            return {"pictures": [picture], "caption": "nested", "doc": DocumentUrl(url="u")}

        return agent

    return build


@pytest.mark.parametrize("size", [16, 3 * 1024 * 1024], ids=["nested", "large"])
async def test_a_tool_returning_nested_or_large_binary_content(store: Store, size: int) -> None:
    _, result, _, _ = await parity(returning(size), store)
    back = [p for m in result.all_messages() for p in m.parts if isinstance(p, ToolReturnPart)]
    content: Any = back[0].content
    assert isinstance(content, dict)
    picture = content["pictures"][0]
    assert isinstance(picture, BinaryContent) and len(picture.data) == size + 4


# Tools: a prepare that renames, a capability built per run ---------------------------------------


def renaming(ran: Ran) -> Agent[None, str]:
    seen: list[list[str]] = []

    def brain(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        seen.append([t.name for t in info.function_tools])
        if len(messages) == 1:
            return ModelResponse(parts=[ToolCallPart("exposed_tool", {})])
        return ModelResponse(parts=[TextPart(f"saw {seen}")])

    async def rename(ctx: RunContext[None], tool_def: ToolDefinition) -> ToolDefinition:
        return replace(tool_def, name="exposed_tool")

    agent: Agent[None, str] = Agent(FunctionModel(brain), name="renaming")

    @agent.tool_plain(prepare=rename)
    def registered() -> str:
        ran("registered")
        return "the registered function ran"

    return agent


async def test_a_tool_its_prepare_renames(store: Store) -> None:
    _, result, _, _ = await parity(renaming, store)
    assert result.output == "saw [['exposed_tool'], ['exposed_tool']]"


def per_run_capability(ran: Ran) -> Agent[Deps, str]:
    def capability(ctx: RunContext[Deps]) -> Toolset[Deps]:
        tools = FunctionToolset[Deps](id=f"for_{ctx.deps.country.lower()}")

        @tools.tool_plain
        def capital() -> str:
            ran("capital")
            return f"the capital of {ctx.deps.country}"

        return Toolset(tools)

    return Agent(TestModel(), deps_type=Deps, name="dynamic-capability",
                 capabilities=[DynamicCapability(capability, id="per_country")])  # fmt: skip


async def test_a_capability_built_for_each_run(store: Store) -> None:
    _, result, _, _ = await parity(per_run_capability, store, deps=Deps("Peru"))
    assert "the capital of Peru" in str(result.all_messages())


# The agent's handler sees each run ------------------------------------------------------------


async def test_identical_events_of_two_runs_reach_the_handler_twice(store: Store) -> None:
    calls: list[str] = []

    async def handler(ctx: RunContext[None], stream: AsyncIterable[AgentStreamEvent]) -> None:
        async for event in stream:
            if isinstance(event, FunctionToolCallEvent):
                calls.append(event.part.tool_name)

    async def same_tool() -> str:
        return "same"

    agent = Agent(TestModel(), name="twice", tools=[same_tool],
                  capabilities=[ProcessEventStream(handler)])  # fmt: skip
    durable = DurableAgent(agent, store=store)
    await durable.run("same", run_id=f"twice-{next(_ids)}")
    await durable.run("same", run_id=f"twice-{next(_ids)}")
    assert calls == ["same_tool", "same_tool"]


# An agent without a model ----------------------------------------------------------------------


async def test_an_agent_without_a_model_is_refused_as_plain(store: Store) -> None:
    with pytest.raises(UserError) as plain:
        await Agent(name="modelless").run("go")
    with pytest.raises(UserError) as ours:
        await DurableAgent(Agent(name="modelless"), store=store).run("go", run_id="modelless")
    assert str(ours.value) == str(plain.value)


# A native tool the provider ran (web search) ----------------------------------------------------


def searching(ran: Ran) -> Agent[None, str]:
    def brain(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        ran("search")
        return ModelResponse(parts=[
            NativeToolCallPart("web_search", {"query": "news"}, tool_call_id="ws1",
                               provider_name="function"),
            NativeToolReturnPart("web_search", [{"title": "Rates cut", "url": "https://x"}],
                                 tool_call_id="ws1", provider_name="function"),
            TextPart("The top story: rates cut."),
        ])  # fmt: skip

    return Agent(FunctionModel(brain), name="searching", capabilities=[WebSearch(local=False)])


async def test_a_native_web_search_the_provider_ran(store: Store) -> None:
    _, result, _, _ = await parity(searching, store, "What is the top news story?")
    assert result.output == "The top story: rates cut."


# Instructions a toolset gives, a model chosen for each step, content a tool enqueues ----------


def instructed(ran: Ran) -> Agent[Deps, str]:
    static = FunctionToolset[Deps](id="static", instructions="Use lookup for keys.")

    @static.tool_plain
    def lookup(key: str) -> str:
        ran("lookup")
        return f"value of {key}"

    agent: Agent[Deps, str] = Agent(TestModel(), deps_type=Deps, name="instructed",
                                    toolsets=[static])  # fmt: skip

    @agent.toolset
    def per_step(ctx: RunContext[Deps]) -> FunctionToolset[Deps]:
        return FunctionToolset[Deps](instructions=f"Step {ctx.run_step} in {ctx.deps.country}.")

    return agent


async def test_instructions_toolsets_give_each_step(store: Store) -> None:
    _, result, _, _ = await parity(instructed, store, deps=Deps("Peru"))
    assert "Step 2 in Peru." in str(result.all_messages())


def selecting(ran: Ran) -> Agent[None, str]:
    first, then = TestModel(custom_output_text="first"), TestModel(custom_output_text="then")

    def choose(ctx: ModelSelectionContext[None]) -> Model:
        return first if ctx.run_step <= 1 else then

    agent: Agent[None, str] = Agent(first, name="selecting", capabilities=[SelectModel(choose)])

    @agent.tool_plain
    def step() -> str:
        ran("step")
        return "stepped"

    return agent


async def test_a_model_chosen_for_each_step(store: Store) -> None:
    _, result, _, _ = await parity(selecting, store)
    assert result.output == "then"


class Note(AbstractCapability[Any]):
    """Enqueues a note after each tool call (a hook around the call, not inside it)."""

    async def after_tool_execute(
        self, ctx: RunContext[Any], *, call: Any, tool_def: Any, args: Any, result: Any
    ) -> Any:
        ctx.enqueue("a note the hook left")
        return result


def enqueuing(ran: Ran, *, by_hook: bool = False) -> Agent[None, str]:
    def brain(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        if len(messages) == 1:
            return ModelResponse(parts=[ToolCallPart("note", {})])
        return ModelResponse(parts=[TextPart(f"saw {len(messages[-1].parts)} parts")])

    agent: Agent[None, str] = Agent(FunctionModel(brain), name="enqueuing",
                                    capabilities=[Note()] if by_hook else [])  # fmt: skip

    @agent.tool
    def note(ctx: RunContext[None]) -> str:
        ran("note")
        if not by_hook:
            ctx.enqueue("a note the tool left")
        return "noted"

    return agent


async def test_difference_enqueue_from_a_tool_is_refused_as_on_pydantic_ais_engines(
    store: Store,
) -> None:
    """A replay answers a committed tool call from its recorded outcome without running the
    tool, so what the tool enqueued would be dropped: refused inside the call (pydantic-ai's own
    engines refuse it inside their durable units), and the run ends with that error."""
    plain = await enqueuing(Ran()).run("go")
    assert "a note the tool left" in str(plain.all_messages())
    durable = DurableAgent(enqueuing(Ran()), store=store)
    with pytest.raises(UserError, match=r"ctx\.enqueue\(\)"):
        await durable.run("go", run_id=f"enqueue-{next(_ids)}")

    # The way out the error names: a capability hook around the call enqueues, and runs again
    # when the run is replayed (`parity` reads the run back).
    _, result, _, _ = await parity(lambda ran: enqueuing(ran, by_hook=True), store)
    assert "a note the hook left" in str(result.all_messages())


async def test_a_runs_handler_and_the_agents_capability_both_see_the_events(store: Store) -> None:
    def build(capability_saw: list[str]) -> Agent[None, str]:
        async def capture(ctx: RunContext[None], stream: AsyncIterable[AgentStreamEvent]) -> None:
            async for event in stream:
                capability_saw.append(type(event).__name__)

        agent = Agent(TestModel(), name="both", capabilities=[ProcessEventStream(capture)])

        @agent.tool_plain
        def same_tool() -> str:
            return "same"

        return agent

    def handler(into: list[str]) -> Any:
        async def collect(ctx: RunContext[None], stream: AsyncIterable[AgentStreamEvent]) -> None:
            async for event in stream:
                into.append(type(event).__name__)

        return collect

    plain_cap: list[str] = []
    plain_run: list[str] = []
    await build(plain_cap).run("same", event_stream_handler=handler(plain_run))
    ours_cap: list[str] = []
    ours_run: list[str] = []
    await DurableAgent(build(ours_cap), store=store).run(
        "same", run_id=f"both-{next(_ids)}", event_stream_handler=handler(ours_run)
    )
    assert (ours_cap, ours_run) == (plain_cap, plain_run)
    assert FunctionToolCallEvent.__name__ in plain_run


def token_cancelling(ran: Ran, token: CancellationToken) -> Agent[None, str]:
    def cancel() -> str:
        ran("cancel")
        token.cancel()
        return "completed before the cancellation took effect"

    return Agent(TestModel(), name="token", tools=[cancel])


# On Redis the cancellation often lands while the tool call's commit waits for its answer:
# the commit settles first (statemachine._commit), then the run ends as plain.
@pytest.mark.parametrize("store", ["embedded", "redis"], indirect=True)
async def test_a_cancellation_token_ends_the_run_as_plain(store: Store) -> None:
    ran, ran_d = Ran(), Ran()
    token = CancellationToken()
    with pytest.raises(RunCancelled) as plain:
        await token_cancelling(ran, token).run("run", cancellation_token=token)
    token_d = CancellationToken()
    durable = DurableAgent(token_cancelling(ran_d, token_d), store=store)
    run_id = f"token-{next(_ids)}"
    with pytest.raises(RunCancelled) as ours:
        await durable.run("run", run_id=run_id, cancellation_token=token_d)
    assert str(ours.value) == str(plain.value)
    assert ran_d.counts == ran.counts == {"cancel": 1}
    with pytest.raises(DurableRunFailed, match="RunCancelled"):
        await durable.run(run_id=run_id)


# An MCP server: a toolset built for each step, its instructions, its tool's retries ------------


def weather_server(log: Path, *, broken: bool = False) -> Any:
    import os
    import sys

    from fastmcp.client.transports import StdioTransport
    from pydantic_ai.mcp import MCPToolset

    root = Path(__file__).resolve().parents[2]
    server = StdioTransport(
        command=sys.executable, args=["-m", "tests.agents.mcp_weather"], cwd=str(root),
        env={**os.environ, "MCP_LOG": str(log), **({"MCP_BROKEN": "1"} if broken else {})},
        keep_alive=False,  # the server ends with each session: no process outlives the test
    )  # fmt: skip
    # A generous start-up timeout: a busy machine can take seconds to start the server.
    return MCPToolset(server, id="weather", include_instructions=True, init_timeout=60)


# pydantic-ai warns (a UserWarning) of the MCP server's unnamed instruction block, plainly too.
@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("store", ["embedded"], indirect=True)  # one store: each run starts it
async def test_an_mcp_server_a_toolset_function_returns(store: Store, tmp_path: Path) -> None:
    builds = itertools.count()

    def build(ran: Ran) -> Agent[None, str]:
        log = tmp_path / f"mcp-{next(builds)}.log"  # one per agent built: per plain run, durable

        def brain(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
            if len(messages) == 1:
                return ModelResponse(parts=[ToolCallPart("forecast", {"city": "Lima"})])
            request = messages[-1]
            assert isinstance(request, ModelRequest)
            return ModelResponse(parts=[TextPart(f"told: {request.instructions}")])

        agent: Agent[None, str] = Agent(FunctionModel(brain), name="mcp-dynamic")

        @agent.toolset(per_run_step=False)
        def weather(ctx: RunContext[None]) -> Any:
            return weather_server(log)  # built again when the run is read back, as code is

        return agent

    _, result, _, _ = await parity(build, store, "Weather in Lima?")
    assert "one city at a time" in str(result.output)
    # The tool ran once for each agent: each plain run's, and the durable one's (its run and its
    # read-back together).
    logs = [tmp_path / f"mcp-{i}.log" for i in range(next(builds))]
    assert len(logs) >= 3 and all(log.read_text() == "Lima\n" for log in logs)


@pytest.mark.parametrize("store", ["embedded"], indirect=True)
async def test_an_mcp_tool_that_keeps_failing_uses_the_agents_retries(
    store: Store, tmp_path: Path
) -> None:
    def build(log: Path) -> Agent[None, str]:
        def brain(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
            return ModelResponse(parts=[ToolCallPart("broken", {"city": "Lima"})])

        return Agent(FunctionModel(brain), name="mcp-retries", retries=1,
                     toolsets=[weather_server(log, broken=True)])  # fmt: skip

    plain_log, durable_log = tmp_path / "plain.log", tmp_path / "durable.log"
    with pytest.raises(UnexpectedModelBehavior) as plain:
        await build(plain_log).run("go")
    with pytest.raises(UnexpectedModelBehavior) as ours:
        await DurableAgent(build(durable_log), store=store).run("go", run_id="mcp-retries")
    assert str(ours.value) == str(plain.value)
    assert durable_log.read_text() == plain_log.read_text() == "Lima\nLima\n"


# Tools revealed during the run: a capability loaded on demand, a tool a ToolReturn reveals ----


def revealing(ran: Ran) -> Agent[None, str]:
    def brain(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        names = {t.name for t in info.function_tools}
        responses = sum(isinstance(m, ModelResponse) for m in messages)
        calls = [("load_capability", {"id": "billing"}, "load"), ("refund", {}, "refund"),
                 ("opener", {}, "open"), ("hidden", {}, "hidden")]  # fmt: skip
        if responses < len(calls):
            name, args, call_id = calls[responses]
            assert name in names or name == "load_capability", (name, sorted(names))
            return ModelResponse(parts=[ToolCallPart(name, args, tool_call_id=call_id)])
        return ModelResponse(parts=[TextPart(f"done with {sorted(names)}")])

    billing = Capability[None](id="billing", defer_loading=True)

    @billing.tool
    def refund(ctx: RunContext[None]) -> str:
        ran("refund")
        return f"refund {ctx.is_tool_available('refund')}, opener {ctx.is_tool_available('opener')}"

    agent: Agent[None, str] = Agent(FunctionModel(brain), name="revealing", capabilities=[billing])

    @agent.tool
    def opener(ctx: RunContext[None]) -> ToolReturn[str]:
        ran("opener")
        return ToolReturn(return_value="opened", tools=["hidden"])

    @agent.tool_plain(defer_loading=True)
    def hidden() -> str:
        ran("hidden")
        return "secret"

    return agent


async def test_tools_revealed_during_the_run(store: Store) -> None:
    _, result, _, _ = await parity(revealing, store)
    assert "hidden" in str(result.output) and "refund" in str(result.output)


async def test_native_tools_given_by_an_override(store: Store) -> None:
    def build(ran: Ran) -> Agent[None, str]:
        def brain(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
            tools = [type(t).__name__ for t in info.model_request_parameters.native_tools]
            return ModelResponse(parts=[TextPart(f"native tools: {tools}")])

        return Agent(FunctionModel(brain), name="overridden")

    def go(agent: Agent[None, str]) -> Any:
        return agent.override(native_tools=[WebSearchTool()])

    async def plainly(r: Ran) -> AgentRunResult[Any]:
        agent = build(r)
        with go(agent):
            return await agent.run("search")

    ran, ran_d = Ran(), Ran()
    plain = await plain_twice(plainly, ran)
    agent = build(ran_d)
    with go(agent):
        result = await DurableAgent(agent, store=store).run("search", run_id=f"nt-{next(_ids)}")
    await same(plain, result, ran, ran_d)
    assert result.output == "native tools: ['WebSearchTool']"


def test_an_approval_answered_through_run_sync(tmp_path: Path) -> None:
    """pydantic-ai's HITL scenario driven with `run_sync` (the sync variant of
    test_durable_parity.py's `test_continuing_after_an_answer`)."""
    from storage import EmbeddedStore

    from .test_durable_parity import gated, run_json

    async def plainly(ran: Ran) -> Any:  # awaited: pydantic-ai's run_sync keeps its own loop
        first = await gated(ran).run("go")
        assert isinstance(first.output, DeferredToolRequests)
        results = first.output.build_results(approve_all=True)
        return await gated(ran).run(
            message_history=first.all_messages(), deferred_tool_results=results
        )

    ran, ran_d = Ran(), Ran()
    plain = asyncio.run(plainly(ran))
    store = EmbeddedStore(tmp_path / "store.db")
    durable = DurableAgent(gated(ran_d), store=store, name="gated-sync")
    parked = durable.run_sync("go", run_id="sync-hitl")
    assert isinstance(parked.output, DeferredToolRequests)
    results = parked.output.build_results(approve_all=True)
    result = durable.run_sync(run_id="sync-hitl", deferred_tool_results=results)
    again = durable.run_sync(run_id="sync-hitl")
    asyncio.run(store.close())
    assert result.output == again.output == plain.output
    assert ran_d.counts == ran.counts == {"delete_file a.txt": 1, "read_file": 1}
    plain_parts = [p["part_kind"] for m in run_json(plain)["all_messages"] for p in m["parts"]]
    ours = [p["part_kind"] for m in run_json(result)["all_messages"] for p in m["parts"]]
    assert ours == plain_parts
