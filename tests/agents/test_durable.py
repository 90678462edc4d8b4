"""DurableAgent: an unmodified pydantic-ai agent run as a durable machine."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, field_validator
from pydantic_ai import Agent, ModelRetry, RunContext
from pydantic_ai.exceptions import ModelHTTPError
from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    ModelResponse,
    RetryPromptPart,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
    UserPromptPart,
)
from pydantic_ai.models.function import AgentInfo, FunctionModel

from agents import DurableAgent, StepPolicy, idempotency_key
from agents.errors import DurableRunFailed
from agents.examples.durable_analyst import Findings, analyst, main
from statemachine import RunError, RunNotFound
from storage import Event, Store, open_store

from ..keys import plain as plain_key

Brain = Callable[[list[ModelMessage], AgentInfo], ModelResponse]


def returns(messages: list[ModelMessage]) -> list[ToolReturnPart | RetryPromptPart]:
    return [
        p for m in messages if isinstance(m, ModelRequest) for p in m.parts
        if isinstance(p, ToolReturnPart | RetryPromptPart)
    ]  # fmt: skip


def calls(*specs: tuple[str, dict[str, Any], str]) -> ModelResponse:
    return ModelResponse(parts=[ToolCallPart(n, a, tool_call_id=i) for n, a, i in specs])


class Counting:
    """A FunctionModel brain that counts its requests."""

    def __init__(self, brain: Brain) -> None:
        self.brain = brain
        self.requests = 0

    def __call__(self, messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        self.requests += 1
        return self.brain(messages, info)


def two_calls_then_answer(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    done = returns(messages)
    if not done:
        return calls(("add", {"a": 1, "b": 2}, "c-add"), ("mul", {"a": 3, "b": 4}, "c-mul"))
    return ModelResponse(parts=[TextPart(" ".join(f"{p.tool_name}={p.content}" for p in done))])


def arithmetic(brain: Brain, ran: list[str] | None = None) -> Agent[int, str]:
    agent = Agent(FunctionModel(brain), deps_type=int, instructions="Use the tools.")

    @agent.tool_plain
    def add(a: int, b: int) -> int:
        """Add two numbers."""
        if ran is not None:
            ran.append(f"add\t{idempotency_key()}")
        return a + b

    @agent.tool
    def mul(ctx: RunContext[int], a: int, b: int) -> int:
        """Multiply two numbers, times the deps."""
        if ran is not None:
            ran.append(f"mul\t{idempotency_key()}")
        return a * b * ctx.deps

    return agent


async def test_two_tool_calls_then_an_answer_commit_one_transition_each(store: Store) -> None:
    ran: list[str] = []
    brain = Counting(two_calls_then_answer)
    durable = DurableAgent(arithmetic(brain, ran), store=store, name="arith")
    result = await durable.run("compute", run_id="r1", deps=10)
    assert result.output == "add=3 mul=120"
    keys = [e.key for e in await durable.history("r1") if e.trigger == "tool_call"]
    assert ran == [f"add\t{keys[0]}", f"mul\t{keys[1]}"]
    assert (result.usage.requests, result.usage.tool_calls, brain.requests) == (2, 2, 2)
    history = await durable.history("r1")
    assert [(e.trigger, e.kind, e.source, e.dest, plain_key(e.key)) for e in history[1:]] == [
        ("model_request", "llm", "running", "running", "r1:0:model_request"),
        ("tool_call", "tool", "running", "running", "r1:1:tool_call:c-add"),
        ("tool_call", "tool", "running", "running", "r1:2:tool_call:c-mul"),
        ("model_request", "llm", "running", "running", "r1:3:model_request"),
        ("output", "output", "running", "done", "r1:4:output"),
    ]
    assert history[1].usage is not None and history[1].usage["requests"] == 1
    assert history[2].output == {
        "segment": 0, "after": 1, "tool_call_id": "c-add", "tool": "add",
        "args": {"a": 1, "b": 2}, "result": 3,
    }  # fmt: skip
    assert history[-1].patch == {"output": "add=3 mul=120"}
    # The messages are what pydantic-ai's own run has: the same shape and the same output.
    plain = await arithmetic(two_calls_then_answer).run("compute", deps=10)
    assert plain.output == result.output
    kinds = [(m.kind, [p.part_kind for p in m.parts]) for m in result.all_messages()]
    assert kinds == [(m.kind, [p.part_kind for p in m.parts]) for m in plain.all_messages()]
    assert result.new_messages() == result.all_messages()


async def test_a_finished_run_returns_its_result_without_a_model_or_tool_call(
    store: Store,
) -> None:
    ran: list[str] = []
    brain = Counting(two_calls_then_answer)
    durable = DurableAgent(arithmetic(brain, ran), store=store, name="arith")
    first = await durable.run("compute", run_id="done-1", deps=10)
    again = await durable.run("compute", run_id="done-1", deps=10)
    assert (brain.requests, len(ran)) == (2, 2)
    assert again.output == first.output
    assert again.usage == first.usage
    assert again.all_messages() == first.all_messages()  # request times too: as first sent
    with pytest.raises(RunError, match="another prompt"):
        await durable.run("something else", run_id="done-1", deps=10)


async def test_parallel_calls_run_one_per_transition_in_the_models_order(store: Store) -> None:
    def brain(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        done = returns(messages)
        if not done:
            return calls(*[("add", {"a": n, "b": 1}, f"c-{k}") for n, k in enumerate("zab", 1)])
        text = ",".join(f"{p.tool_call_id}={p.content}" for p in done)
        return ModelResponse(parts=[TextPart(text)])

    durable = DurableAgent(arithmetic(brain), store=store, name="par")
    result = await durable.run("go", run_id="p", deps=1)
    assert result.output == "c-z=2,c-a=3,c-b=4"
    keys = [plain_key(e.key) for e in await durable.history("p") if e.trigger == "tool_call"]
    assert keys == ["p:1:tool_call:c-z", "p:2:tool_call:c-a", "p:3:tool_call:c-b"]


@dataclass
class Ledger:
    owner: str
    entries: list[str]


async def test_deps_reach_tools_and_instructions(store: Store) -> None:
    def brain(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        done = returns(messages)
        if not done:
            return calls(("record", {"item": "coffee"}, "c1"))
        request = next(m for m in messages if isinstance(m, ModelRequest))
        return ModelResponse(parts=[TextPart(f"{request.instructions} / {done[0].content}")])

    agent = Agent(FunctionModel(brain), deps_type=Ledger)

    @agent.instructions
    def whose(ctx: RunContext[Ledger]) -> str:
        return f"Ledger of {ctx.deps.owner}."

    @agent.tool
    def record(ctx: RunContext[Ledger], item: str) -> str:
        """Record an item."""
        ctx.deps.entries.append(f"{item}@{ctx.tool_call_id}")
        return f"recorded {item} for {ctx.deps.owner}"

    ledger = Ledger(owner="ada", entries=[])
    result = await DurableAgent(agent, store=store, name="ledger").run("x", run_id="d", deps=ledger)
    assert result.output == "Ledger of ada. / recorded coffee for ada"
    assert ledger.entries == ["coffee@c1"]


async def test_model_retry_and_bad_arguments_go_back_to_the_model(store: Store) -> None:
    def brain(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        done = returns(messages)
        if len(done) == 0:
            return calls(("divide", {"a": 1, "b": 0}, "c1"), ("divide", {"a": "x"}, "c2"),
                         ("nope", {}, "c3"))  # fmt: skip
        if len(done) == 3:
            return calls(("divide", {"a": 6, "b": 3}, "c4"))
        return ModelResponse(parts=[TextPart(str(done[-1].content))])

    agent = Agent(FunctionModel(brain))

    @agent.tool_plain
    def divide(a: float, b: float) -> float:
        """Divide a by b."""
        if b == 0:
            raise ModelRetry("b must not be 0")
        return a / b

    durable = DurableAgent(agent, store=store, name="div")
    result = await durable.run("go", run_id="m")
    assert result.output == (await agent.run("go")).output == "2.0"
    outputs = [e.output for e in await durable.history("m") if e.trigger == "tool_call"]
    # Bad arguments and unknown tools never reach a tool: pydantic-ai answers them itself.
    assert [o["tool_call_id"] for o in outputs if isinstance(o, dict)] == ["c1", "c4"]
    assert isinstance(outputs[0], dict) and outputs[0]["retry"] == "b must not be 0"
    # The model saw them as retries, one per call, in its order.
    second = result.all_messages()[2]
    assert isinstance(second, ModelRequest)
    seen = [(getattr(p, "outcome", None), getattr(p, "tool_call_id", None)) for p in second.parts]
    assert seen == [("retried", "c1"), ("retried", "c2"), ("retried", "c3")]


class Verdict(BaseModel):
    score: int

    @field_validator("score")
    @classmethod
    def in_range(cls, v: int) -> int:
        if not 0 <= v <= 10:
            raise ValueError("score must be between 0 and 10")
        return v


async def test_output_validation_retries_happen_inside_the_model_request(store: Store) -> None:
    brain_calls = 0

    def brain(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        nonlocal brain_calls
        brain_calls += 1
        tool = info.output_tools[0].name
        score = {1: 42, 2: 11}.get(brain_calls, 7)
        return calls((tool, {"score": score}, f"out-{brain_calls}"))

    agent = Agent(FunctionModel(brain), output_type=Verdict, retries={"output": 3})

    @agent.output_validator
    def not_eleven(v: Verdict) -> Verdict:
        if v.score == 11:
            raise ModelRetry("11 is not a score")
        return v

    durable = DurableAgent(agent, store=store, name="verdict")
    result = await durable.run("judge", run_id="v")
    assert result.output == Verdict(score=7)
    assert brain_calls == 3
    history = await durable.history("v")
    assert [e.trigger for e in history[1:]] == ["model_request"] * 3 + ["output"]
    again = await durable.run("judge", run_id="v")
    assert (again.output, brain_calls) == (Verdict(score=7), 3)


def flaky(failures: int) -> Counting:
    def brain(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        if counting.requests <= failures:
            raise ModelHTTPError(503, "flaky", "overloaded")
        return ModelResponse(parts=[TextPart("fine")])

    counting = Counting(brain)
    return counting


async def test_model_requests_are_retried_by_their_own_policy(store: Store) -> None:
    brain = flaky(failures=1)
    fast = StepPolicy(retries=2, backoff=0.01)
    durable = DurableAgent(Agent(FunctionModel(brain)), store=store, name="f", model_policy=fast)
    result = await durable.run("hi", run_id="ok")
    assert (result.output, brain.requests) == ("fine", 2)
    event = (await durable.history("ok"))[-2]
    assert (event.trigger, event.attempt) == ("model_request", 2)

    brain = flaky(failures=5)
    once = StepPolicy(retries=1, backoff=0.01)
    durable = DurableAgent(Agent(FunctionModel(brain)), store=store, name="f", model_policy=once)
    with pytest.raises(ModelHTTPError):  # as Agent.run raises it
        await durable.run("hi", run_id="no")
    assert brain.requests == 2
    with pytest.raises(DurableRunFailed, match="ModelHTTPError") as failed:  # read back
        await durable.run(run_id="no")
    assert brain.requests == 2 and failed.value.error["attempt"] == 2


async def test_a_tool_that_times_out_is_retried_by_the_tool_policy(store: Store) -> None:
    tries: list[str] = []

    def brain(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        done = returns(messages)
        if not done:
            return calls(("slow", {}, "c1"))
        return ModelResponse(parts=[TextPart(str(done[0].content))])

    def agent(always_slow: bool) -> Agent[None, str]:
        a = Agent(FunctionModel(brain))

        @a.tool_plain
        async def slow() -> str:
            """Slow the first time (or every time)."""
            tries.append(idempotency_key())
            if always_slow or len(tries) == 1:
                await asyncio.sleep(5)
            return "finally"

        return a

    policy = StepPolicy(retries=1, timeout=0.2, backoff=0.01)
    durable = DurableAgent(agent(False), store=store, name="slow", tool_policy=policy)
    result = await durable.run("go", run_id="t")
    assert result.output == "finally"
    assert [plain_key(t) for t in tries] == ["t:1:tool_call:c1", "t:1:tool_call:c1"]  # one key
    event = next(e for e in await durable.history("t") if e.trigger == "tool_call")
    assert event.attempt == 2

    strict = StepPolicy(retries=0, timeout=0.2)
    durable = DurableAgent(agent(True), store=store, name="slow", tool_policy=strict)
    with pytest.raises(DurableRunFailed, match=r"timed out after 0\.2s"):
        await durable.run("go", run_id="t2")


def test_the_graph_is_one_running_state_an_approval_state_and_the_ends(store: Store) -> None:
    durable = DurableAgent(analyst, store=store)
    text = durable.graph().mermaid()
    for edge in (
        'running -->|"model_request · LLM<br/>[asks_model_request]"| running',
        'running -->|"tool_call · tool<br/>[asks_tool_call]"| running',
        'running -->|"defer · defer<br/>[asks_defer]"| approval',
        'approval -->|"answer · wait<br/>route: done"| running',
        'running -->|"output · output<br/>[asks_output]"| done',
    ):
        assert edge in text, text
    assert 'title: "durable_analyst v1"' in text


async def test_the_example_analyst_flags_the_outlier(store: Store) -> None:
    durable = DurableAgent(analyst, store=store)
    result = await durable.run("Analyse these numbers: [3, 4, 5, 4, 3, 5, 4, 97]", run_id="a")
    assert isinstance(result.output, Findings)
    assert result.output.anomalies == [97.0] and result.output.mean == 15.625
    assert (result.usage.requests, result.usage.tool_calls) == (2, 2)
    assert (
        result.output
        == (await analyst.run("Analyse these numbers: [3, 4, 5, 4, 3, 5, 4, 97]")).output
    )
    html = await durable.report("a")
    assert "summary_statistics" in html and "detect_anomalies" in html


def test_the_example_prints_what_this_process_asked_and_refuses_other_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    args = ["3", "4", "97", "--store", url, "--run-id", "ex"]
    assert main(args) == 0
    assert "ex: 2 model requests and 2 tool calls made by this process" in capsys.readouterr().out
    assert main(args) == 0  # done already: read back, nothing asked
    assert "ex: 0 model requests and 0 tool calls made by this process" in capsys.readouterr().out
    assert main(["1", "2", "--store", url, "--run-id", "ex"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: run 'ex' exists and was started with another prompt")
    assert "start a new run with another run_id" in err and "Traceback" not in err


def test_run_sync_and_message_history() -> None:
    def brain(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        return ModelResponse(parts=[TextPart(f"{len(messages)} messages")])

    earlier: list[ModelMessage] = [
        ModelRequest(parts=[UserPromptPart("first")]),
        ModelResponse(parts=[TextPart("1 messages")]),
    ]
    store = open_store("memory://")
    durable = DurableAgent(Agent(FunctionModel(brain)), store=store, name="sync")
    result = durable.run_sync("second", run_id="s", message_history=earlier)
    asyncio.run(store.close())
    assert result.output == "3 messages"
    assert len(result.all_messages()) == 4 and len(result.new_messages()) == 2
    assert result.all_messages()[:2] == earlier


class Stop(BaseException):
    """Stands for the process dying: nothing catches it."""


async def test_run_id_alone_resumes_and_an_unknown_one_is_refused(store: Store) -> None:
    brain = Counting(two_calls_then_answer)
    durable = DurableAgent(arithmetic(brain), store=store, name="arith")

    def stop_after_the_first_request(event: Event) -> None:
        if event.trigger == "model_request":
            raise Stop

    with pytest.raises(Stop):
        await durable.run("compute", run_id="half", deps=10, on_event=stop_after_the_first_request)
    assert (await durable.history("half"))[-1].trigger == "model_request"
    made: list[str] = []
    result = await durable.run(run_id="half", deps=10, on_event=lambda e: made.append(e.trigger))
    assert (result.output, brain.requests) == ("add=3 mul=120", 2)
    assert made == ["tool_call", "tool_call", "model_request", "output"]
    with pytest.raises(RunNotFound):
        await durable.run(run_id="nobody")


async def test_an_output_call_beside_function_calls_ends_the_run_as_pydantic_ai_does(
    store: Store,
) -> None:
    def brain(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        if returns(messages):
            return calls((info.output_tools[0].name, {"score": 9}, "o2"))
        return ModelResponse(parts=[
            TextPart("checking"), ToolCallPart("add", {"a": 1, "b": 2}, tool_call_id="c1"),
            ToolCallPart(info.output_tools[0].name, {"score": 5}, tool_call_id="o1"),
        ])  # fmt: skip

    agent = Agent(FunctionModel(brain), output_type=Verdict)

    @agent.tool_plain
    def add(a: int, b: int) -> int:
        """Add."""
        return a + b

    plain = await agent.run("go")
    durable = DurableAgent(agent, store=store, name="mix")
    result = await durable.run("go", run_id="mix")
    assert result.output == plain.output == Verdict(score=5)
    assert result.all_messages() != [] and len(result.all_messages()) == len(plain.all_messages())
    # The function call beside the output call is a transition of its own, not run in the
    # model request's (pydantic-ai's end strategy decides whether it runs at all).
    ran = sum(1 for m in plain.all_messages() for p in m.parts
              if p.part_kind == "tool-return" and p.tool_name == "add")  # fmt: skip
    triggers = [e.trigger for e in await durable.history("mix")]
    assert triggers.count("tool_call") == ran


async def test_a_failed_run_stays_failed_when_run_again(store: Store) -> None:
    brain = flaky(failures=99)
    durable = DurableAgent(
        Agent(FunctionModel(brain)), store=store, name="f", model_policy=StepPolicy()
    )
    with pytest.raises(ModelHTTPError):  # what Agent.run raises
        await durable.run("hi", run_id="gone")
    with pytest.raises(DurableRunFailed, match="ModelHTTPError"):
        await durable.run("hi", run_id="gone")
    assert brain.requests == 1


def test_no_module_imports_a_private_pydantic_ai_module() -> None:
    """pydantic-ai may move its private modules in any release: only its public surface."""
    import ast

    root = Path(__file__).resolve().parents[2] / "agents"
    private: list[str] = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = (
                [a.name for a in node.names] if isinstance(node, ast.Import)
                else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0
                else []
            )  # fmt: skip
            for name in names:
                parts = name.split(".")
                if parts[0] in ("pydantic_ai", "pydantic_graph") and any(
                    p.startswith("_") for p in parts[1:]
                ):
                    private.append(f"{path.relative_to(root.parent)}: {name}")
    assert private == []


@pytest.mark.parametrize("kind", ["embedded", "redis"])
async def test_runs_stored_in_the_first_journal_format_go_on(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Runs stored by the DurableAgent before it became a durability engine (a backup made
    with that code: tests/agents/durable_v1_fixture.py) go on: parked, cut off in a call, done."""
    from pydantic_ai import DeferredToolResults

    from storage.backup import import_runs

    from ..conftest import make_store
    from . import durable_v1_fixture as v1

    store = await make_store(kind, request, tmp_path)
    try:
        imported = await import_runs(store, v1.FIXTURE.read_text().splitlines())
        assert sorted(imported.imported) == sorted([v1.PARKED, v1.CUT, v1.DONE])

        ran: list[str] = []
        done = await DurableAgent(v1.make_agent(ran), store=store).run(run_id=v1.DONE)
        assert (done.output, ran) == (v1.EXPECTED, [])  # nothing asked, nothing run

        cut = await DurableAgent(v1.make_agent(ran, gated=False), store=store).run(run_id=v1.CUT)
        assert (cut.output, ran) == (v1.EXPECTED, ["convert", "request"])

        ran.clear()
        approve = DeferredToolResults(approvals={"call-convert": True})
        parked = await DurableAgent(v1.make_agent(ran), store=store).run(
            run_id=v1.PARKED, deferred_tool_results=approve
        )
        assert (parked.output, ran) == (v1.EXPECTED, ["convert", "request"])
        for run_id in (v1.PARKED, v1.CUT):
            events = await store.history(run_id)
            assert [e.trigger for e in events][-3:] == ["tool_call", "model_request", "output"]
    finally:
        await store.close()


def test_persisted_operation_names_stay_the_same() -> None:
    """Stored runs name their transitions, states and memory kind: these names are data that
    runs in flight depend on (as pydantic-ai pins its engines' operation names). Change them
    only with a migration of stored runs."""
    from agents.durable._steps import DURABLE_KIND, durable_machine

    machine = durable_machine("pinned")
    table = sorted(
        (
            t.trigger,
            *t.source,
            t.dest or "",
            tuple(sorted((t.routes or {}).items())),
            t.step.kind if t.step else "",
        )
        for t in machine.transitions
    )
    assert DURABLE_KIND == "pydantic_ai.Agent"
    assert table == [
        ("answer", "approval", "", (("done", "running"), ("more", "approval")), "wait"),
        ("decision", "running", "running", (), "decision"),
        ("defer", "running", "approval", (), "defer"),
        ("fail", "running", "failed", (), "fail"),
        ("model_request", "running", "running", (), "llm"),
        ("output", "running", "done", (), "output"),
        ("output_call", "running", "running", (), "tool"),
        ("sleep", "running", "running", (), "sleep"),
        ("tool_call", "running", "running", (), "tool"),
    ]
