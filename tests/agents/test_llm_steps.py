"""LLM steps: one model request per transition, committed with its messages and usage."""

from __future__ import annotations

import json

import pytest
from pydantic import BaseModel
from pydantic_ai.exceptions import ModelAuthenticationError, ModelServerError
from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    ModelResponse,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
    UserPromptPart,
)
from pydantic_ai.models.function import AgentInfo, FunctionModel

from agents import Agent, llm
from storage import Store


class Notes(BaseModel):
    topic: str
    summary: str = ""
    verdict: str = ""
    facts: dict[str, int] = {}


class Facts(BaseModel):
    words: int
    lines: int


class Script:
    """A FunctionModel's brain: answers in order, counts calls, records what it was sent."""

    def __init__(self, *answers: object) -> None:
        self.answers = list(answers)
        self.calls = 0
        self.seen: list[list[ModelMessage]] = []

    def __call__(self, messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        self.calls += 1
        self.seen.append(list(messages))
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        if isinstance(answer, str) and not info.allow_text_output:
            answer = {"response": answer}  # a Literal output is answered through its tool
        if isinstance(answer, dict):
            return ModelResponse(parts=[ToolCallPart(info.output_tools[0].name, answer)])
        return ModelResponse(parts=[TextPart(str(answer))])


def two_steps(script: Script, **summary_options: object) -> Agent[Notes]:
    return Agent(
        name="notes", memory=Notes, model=FunctionModel(script), initial="new", final=["done"],
        on_error="failed",
        transitions=[
            llm("summarize", "new", "summarized", into="summary",
                prompt=lambda m: f"Summarize {m.topic}", backoff=0.01, **summary_options),  # type: ignore[arg-type]
            llm("judge", "summarized", "done", into="verdict",
                prompt=lambda m: f"Judge: {m.summary}", instructions="Be brief."),
        ],
    )  # fmt: skip


def prompts(messages: list[ModelMessage]) -> list[str]:
    return [
        str(p.content)
        for m in messages
        if isinstance(m, ModelRequest)
        for p in m.parts
        if isinstance(p, UserPromptPart)
    ]


async def test_each_step_is_one_request_committed_with_its_messages_and_usage(
    store: Store,
) -> None:
    script = Script("a short summary", "looks right")
    run = await two_steps(script).start(store, Notes(topic="durability"))
    await run.until_done()
    assert (run.status, run.memory.summary, run.memory.verdict) == (
        "done",
        "a short summary",
        "looks right",
    )
    assert script.calls == 2
    # The second request carries the first step's conversation, then its own prompt.
    assert prompts(script.seen[1]) == ["Summarize durability", "Judge: a short summary"]
    steps = (await run.history())[1:]
    assert [len(e.messages) for e in steps] == [2, 2]  # request + response, appended per step
    assert [e.messages[1]["kind"] for e in steps] == ["response", "response"]  # type: ignore[index,call-overload]
    for e in steps:
        assert e.kind == "llm" and e.usage is not None and e.usage["requests"] == 1
        assert e.usage["input_tokens"] > 0 and e.usage["output_tokens"] > 0


async def test_structured_output_goes_into_memory(store: Store) -> None:
    script = Script({"words": 3, "lines": 1})
    agent = Agent(
        name="facts", memory=Notes, model=FunctionModel(script), initial="new", final=["done"],
        transitions=[llm("count", "new", "done", prompt="count", output=Facts,
                         update=lambda m, out: {"facts": out.model_dump()})],
    )  # fmt: skip
    run = await agent.start(store, Notes(topic="x"))
    await run.until_done()
    assert run.memory.facts == {"words": 3, "lines": 1}


async def test_invalid_output_is_sent_back_with_the_error_then_accepted(store: Store) -> None:
    script = Script({"words": "three", "lines": 1}, {"words": 3, "lines": 1})
    agent = Agent(
        name="facts", memory=Notes, model=FunctionModel(script), initial="new", final=["done"],
        transitions=[llm("count", "new", "done", prompt="count", output=Facts,
                         update=lambda m, out: {"facts": out.model_dump()})],
    )  # fmt: skip
    run = await agent.start(store, Notes(topic="x"))
    await run.until_done()
    assert (run.status, run.memory.facts) == ("done", {"words": 3, "lines": 1})
    # pydantic-ai 2.x feeds the validation error back as the output tool's return value.
    fed_back = [p for m in script.seen[1] for p in m.parts if isinstance(p, ToolReturnPart)]
    assert fed_back and fed_back[0].outcome == "retried"
    assert "valid integer" in json.dumps(fed_back[0].content)
    [event] = [e for e in await run.history() if e.trigger == "count"]
    assert event.usage is not None and event.usage["requests"] == 2
    # prompt, bad answer, error fed back, good answer, the output tool's return: all committed
    assert [m["kind"] for m in event.messages] == [  # type: ignore[index,call-overload]
        "request", "response", "request", "response", "request",
    ]  # fmt: skip


async def test_output_that_keeps_failing_sends_the_run_to_its_failure_state(store: Store) -> None:
    bad = {"words": "three", "lines": 1}
    agent = Agent(
        name="facts", memory=Notes, model=FunctionModel(Script(bad, bad, bad)), initial="new",
        final=["done"], on_error="failed",
        transitions=[llm("count", "new", "done", prompt="count", output=Facts, output_retries=1,
                         update=lambda m, out: {"facts": out.model_dump()})],
    )  # fmt: skip
    run = await agent.start(store, Notes(topic="x"))
    await run.until_done()
    assert (run.state, run.status) == ("failed", "failed")
    last = (await run.history())[-1]
    assert last.kind == "error" and last.error is not None
    assert last.error["type"] == "UnexpectedModelBehavior"


async def test_transient_provider_errors_are_retried_with_backoff(store: Store) -> None:
    script = Script(ModelServerError("fn", "503"), ModelServerError("fn", "503"), "fine", "ok")
    run = await two_steps(script, retries=3).start(store, Notes(topic="t"))
    await run.until_done()
    assert (run.status, script.calls) == ("done", 4)
    summarize = (await run.history())[1]
    assert (summarize.trigger, summarize.attempt) == ("summarize", 3)


async def test_a_rejected_request_is_not_retried(store: Store) -> None:
    script = Script(ModelAuthenticationError("fn", "bad key"), "never")
    run = await two_steps(script, retries=3).start(store, Notes(topic="t"))
    await run.until_done()
    assert (run.status, script.calls) == ("failed", 1)
    last = (await run.history())[-1]
    assert last.error is not None and last.error["type"] == "ModelAuthenticationError"


async def test_llm_routes_make_the_answer_pick_the_next_state(store: Store) -> None:
    script = Script("escalate")
    agent = Agent(
        name="router", memory=Notes, model=FunctionModel(script), initial="new",
        final=["closed", "escalated"],
        transitions=[llm("triage", "new", None, prompt="route this",
                         routes={"close": "closed", "escalate": "escalated"})],
    )  # fmt: skip
    run = await agent.start(store, Notes(topic="x"))
    await run.until_done()
    assert (run.state, run.status) == ("escalated", "done")


def test_unknown_model_and_missing_key_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    agent = two_steps(Script())
    with pytest.raises(ValueError, match=r"cannot use model 'nonsense:foo': Unknown model"):
        agent.with_model("nonsense:foo").check_models()
    no_model = Agent(
        name="x", memory=Notes, model="openai:gpt-4o-mini", initial="new", final=["done"],
        transitions=[llm("go", "new", "done", prompt="hi")],
    )  # fmt: skip
    with pytest.raises(ValueError, match="OPENAI_API_KEY"):
        no_model.check_models()
