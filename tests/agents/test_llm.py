"""`llm()` steps against pydantic-ai `FunctionModel`s: what the model is sent, what is committed,
and how provider errors and bad output are handled. No request leaves the process."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from pydantic import BaseModel, Field
from pydantic_ai import Agent as PydanticAgent
from pydantic_ai.exceptions import (
    ModelAuthenticationError,
    ModelConnectionError,
    ModelHTTPError,
    ModelRateLimitError,
    ModelRequestRejectedError,
    ModelServerError,
    ModelUnavailableError,
    UnexpectedModelBehavior,
    UserError,
)
from pydantic_ai.messages import (
    ModelMessage,
    ModelMessagesTypeAdapter,
    ModelRequest,
    ModelResponse,
    RetryPromptPart,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
    UserPromptPart,
)
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.usage import RequestUsage

from agents import Agent, llm, tool
from statemachine.engine import Transition
from storage import Event, Store

from ..upstream import ModelRefused, validation_error


class Facts(BaseModel):
    words: int = Field(ge=0)
    lines: int = Field(ge=0)


class Notes(BaseModel):
    topic: str
    summary: str = ""
    verdict: str = ""
    facts: Facts | None = None


Answer = str | dict[str, Any] | Exception
"""Text; the arguments of the output tool call; or an error the model raises."""


class Brain:
    """The function behind a `FunctionModel`: answers in order, counts its calls and keeps what
    it was sent. Each answer reports `usage` (input, output tokens) so the events can be
    checked to the token."""

    def __init__(self, *answers: Answer, usage: tuple[int, int] = (100, 10)) -> None:
        self.answers = list(answers)
        self.usage = usage
        self.calls = 0
        self.seen: list[list[ModelMessage]] = []
        self.infos: list[AgentInfo] = []

    def __call__(self, messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        self.calls += 1
        self.seen.append(list(messages))
        self.infos.append(info)
        if not self.answers:
            raise AssertionError(f"model request {self.calls} was not expected")
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        if isinstance(answer, str) and not info.allow_text_output:
            answer = {"response": answer}  # a Literal output is answered through its tool
        inp, out = self.usage
        usage = RequestUsage(input_tokens=inp, output_tokens=out)
        if isinstance(answer, dict):
            call = ToolCallPart(info.output_tools[0].name, answer)
            return ModelResponse(parts=[call], usage=usage)
        return ModelResponse(parts=[TextPart(answer)], usage=usage)

    def model(self) -> FunctionModel:
        return FunctionModel(self)


def prompts(messages: list[ModelMessage]) -> list[str]:
    """The user prompts in `messages`, in order."""
    return [
        str(p.content)
        for m in messages
        if isinstance(m, ModelRequest)
        for p in m.parts
        if isinstance(p, UserPromptPart)
    ]


FINAL = ("done", "closed", "escalated")


def notes_agent(
    brain: Brain, *transitions: Transition, on_error: str | None = None
) -> Agent[Notes]:
    """An agent over `Notes` whose final states are those of `FINAL` the table leads to."""
    reached = {d for t in transitions for d in t.dests}
    return Agent(
        name="notes",
        memory=Notes,
        model=brain.model(),
        initial="new",
        final=[s for s in FINAL if s in reached],
        on_error=on_error,
        transitions=list(transitions),
    )


def summarize(**options: Any) -> Transition:
    return llm(
        "summarize",
        "new",
        options.pop("dest", "summarized"),
        prompt=lambda m: f"Summarize {m.topic}",
        into="summary",
        backoff=0.01,
        **options,
    )


def judge(**options: Any) -> Transition:
    return llm(
        "judge",
        "summarized",
        "done",
        prompt=lambda m: f"Judge this summary: {m.summary}",
        into="verdict",
        **options,
    )


async def steps_of(store: Store, run_id: str) -> list[Event]:
    """The run's events after its creation."""
    return (await store.history(run_id))[1:]


# --- what the model is sent, what goes into memory ------------------------------------------


async def test_the_prompt_is_built_from_memory_and_the_answer_goes_into_the_field(
    store: Store,
) -> None:
    brain = Brain("Durable runs survive crashes.")
    agent = notes_agent(brain, summarize(dest="done"))
    run = await agent.start(store, Notes(topic="durability"), run_id="p1")
    await run.until_done()
    assert (run.status, run.memory.summary) == ("done", "Durable runs survive crashes.")
    assert brain.calls == 1
    assert prompts(brain.seen[0]) == ["Summarize durability"]
    [event] = await steps_of(store, "p1")
    assert (event.kind, event.source, event.dest) == ("llm", "new", "done")
    assert event.patch == {"summary": "Durable runs survive crashes."}
    assert event.output is None  # with into=, the answer is recorded once: in the patch
    stored = await store.load("p1")
    assert stored is not None and stored.memory["summary"] == "Durable runs survive crashes."


async def test_instructions_are_sent_with_their_own_step_only(store: Store) -> None:
    brain = Brain("a summary", "fine")
    agent = notes_agent(
        brain,
        summarize(instructions=lambda m: f"You summarize texts about {m.topic}."),
        judge(),
    )
    run = await agent.start(store, Notes(topic="queues"))
    await run.until_done()
    assert run.status == "done"
    assert brain.infos[0].instructions == "You summarize texts about queues."
    assert brain.infos[1].instructions is None  # the judge declared none
    first = await steps_of(store, run.run_id)
    assert first[0].messages[0]["instructions"] == "You summarize texts about queues."  # type: ignore[index,call-overload]


async def test_structured_output_is_validated_into_a_pydantic_field(store: Store) -> None:
    brain = Brain({"words": 12, "lines": 2})
    agent = notes_agent(
        brain, llm("count", "new", "done", prompt="Count the words", output=Facts, into="facts")
    )
    run = await agent.start(store, Notes(topic="t"), run_id="s1")
    await run.until_done()
    assert run.status == "done"
    assert run.memory.facts == Facts(words=12, lines=2)
    # the model was offered exactly one output tool, for Facts, and no free text
    assert not brain.infos[0].allow_text_output
    [schema] = [t.parameters_json_schema for t in brain.infos[0].output_tools]
    assert set(schema["properties"]) == {"words", "lines"}
    [event] = await steps_of(store, "s1")
    assert event.patch == {"facts": {"words": 12, "lines": 2}}
    # a fresh process reads the same typed memory back
    again = await agent.resume(store, "s1")
    assert again.memory.facts == Facts(words=12, lines=2)


async def test_structured_output_without_into_is_recorded_on_the_event(store: Store) -> None:
    brain = Brain({"words": 3, "lines": 1})
    agent = notes_agent(brain, llm("count", "new", "done", prompt="count", output=Facts))
    run = await agent.start(store, Notes(topic="t"), run_id="o1")
    await run.until_done()
    [event] = await steps_of(store, "o1")
    assert (event.output, event.patch) == ({"words": 3, "lines": 1}, {})


# --- the conversation --------------------------------------------------------------------------


async def test_messages_are_committed_and_the_next_step_continues_the_conversation(
    store: Store,
) -> None:
    brain = Brain("Summary: queues decouple producers.", "Verdict: accurate.")
    agent = notes_agent(brain, summarize(), judge())
    run = await agent.start(store, Notes(topic="queues"), run_id="c1")
    await run.until_done()
    assert run.status == "done" and brain.calls == 2
    first, second = await steps_of(store, "c1")
    assert [m["kind"] for m in first.messages] == ["request", "response"]  # type: ignore[index,call-overload]
    assert [m["kind"] for m in second.messages] == ["request", "response"]  # type: ignore[index,call-overload]

    # The committed messages are pydantic-ai's own JSON: they load back as messages.
    loaded = ModelMessagesTypeAdapter.validate_python(first.messages)
    assert prompts(loaded) == ["Summarize queues"]
    assert isinstance(loaded[1], ModelResponse)
    assert loaded[1].parts == [TextPart("Summary: queues decouple producers.")]

    # The second request carries the first step's exchange, as committed, then its own prompt.
    sent = brain.seen[1]
    assert len(sent) == 3
    assert ModelMessagesTypeAdapter.dump_python(sent[:2], mode="json") == first.messages
    assert prompts(sent) == [
        "Summarize queues",
        "Judge this summary: Summary: queues decouple producers.",
    ]
    # ...and each step commits only what it added (appended, never the whole conversation again)
    assert prompts(ModelMessagesTypeAdapter.validate_python(second.messages)) == [
        "Judge this summary: Summary: queues decouple producers."
    ]


async def test_a_resumed_run_sends_the_conversation_committed_by_another_process(
    store: Store,
) -> None:
    first_brain = Brain("the summary")
    first = notes_agent(first_brain, summarize(), judge())
    run = await first.start(store, Notes(topic="t"), run_id="r1")
    await run.step()  # only the summary; the "process" ends here
    await run.release()

    later_brain = Brain("the verdict")
    later = first.with_model(later_brain.model())
    resumed = await later.resume(store, "r1")
    await resumed.until_done()
    assert resumed.status == "done" and later_brain.calls == 1
    assert prompts(later_brain.seen[0]) == ["Summarize t", "Judge this summary: the summary"]
    reply = later_brain.seen[0][1]
    assert isinstance(reply, ModelResponse) and reply.parts == [TextPart("the summary")]


async def test_history_false_sends_only_the_steps_own_prompt(store: Store) -> None:
    brain = Brain("s", "v")
    agent = notes_agent(brain, summarize(), judge(history=False))
    run = await agent.start(store, Notes(topic="t"))
    await run.until_done()
    assert prompts(brain.seen[1]) == ["Judge this summary: s"]


async def test_token_usage_is_recorded_on_each_event(store: Store) -> None:
    brain = Brain("s", "v", usage=(321, 17))
    agent = notes_agent(brain, summarize(), judge())
    run = await agent.start(store, Notes(topic="t"), run_id="u1")
    await run.until_done()
    for event in await steps_of(store, "u1"):
        assert event.usage == {"requests": 1, "input_tokens": 321, "output_tokens": 17}


# --- provider errors -------------------------------------------------------------------------

TRANSIENT: list[Callable[[], Exception]] = [
    lambda: ModelServerError("fn", "500 internal error"),
    lambda: ModelRateLimitError("fn", "429 slow down"),
    lambda: ModelHTTPError.for_category(ModelRateLimitError, status_code=429, model_name="fn"),
    lambda: ModelHTTPError.for_category(ModelUnavailableError, status_code=503, model_name="fn"),
    lambda: ModelConnectionError("fn", "connection reset", phase="read"),
]


@pytest.mark.parametrize(
    "error", TRANSIENT, ids=["server", "rate-limit", "http-429", "http-503", "connection"]
)
async def test_transient_model_errors_are_retried_and_the_attempt_recorded(
    store: Store, error: Callable[[], Exception]
) -> None:
    brain = Brain(error(), error(), "third time lucky")
    agent = notes_agent(brain, summarize(dest="done", retries=3))
    run = await agent.start(store, Notes(topic="t"), run_id="tr")
    await run.until_done()
    assert (run.status, run.memory.summary, brain.calls) == ("done", "third time lucky", 3)
    [event] = await steps_of(store, "tr")
    assert (event.kind, event.attempt) == ("llm", 3)
    assert event.usage is not None and event.usage["requests"] == 1  # failed tries cost nothing
    assert [m["kind"] for m in event.messages] == ["request", "response"]  # type: ignore[index,call-overload]


async def test_transient_errors_that_outlast_the_retries_fail_the_run(store: Store) -> None:
    brain = Brain(*(ModelServerError("fn", "still down") for _ in range(3)))
    agent = notes_agent(brain, summarize(dest="done", retries=2), on_error="failed")
    run = await agent.start(store, Notes(topic="t"), run_id="tx")
    await run.until_done()
    assert (run.state, run.status, brain.calls) == ("failed", "failed", 3)
    [event] = await steps_of(store, "tx")
    assert event.kind == "error" and event.attempt == 3
    assert event.error is not None
    assert (event.error["type"], event.error["message"]) == ("ModelServerError", "still down")


@pytest.mark.parametrize(
    "error",
    [
        lambda: ModelAuthenticationError("fn", "invalid api key"),
        lambda: ModelHTTPError.for_category(
            ModelRequestRejectedError, status_code=400, model_name="fn"
        ),
        lambda: UserError("the model was used wrongly"),
    ],
    ids=["auth", "http-400", "user-error"],
)
async def test_an_error_that_cannot_pass_is_not_retried(
    store: Store, error: Callable[[], Exception]
) -> None:
    brain = Brain(error(), "never asked")
    agent = notes_agent(brain, summarize(dest="done", retries=3))
    run = await agent.start(store, Notes(topic="t"), run_id="nt")
    await run.until_done()
    assert (run.status, run.state, brain.calls) == ("failed", "new", 1)
    [event] = await steps_of(store, "nt")
    assert event.kind == "error" and event.attempt == 1
    assert event.error is not None and event.error["type"] == type(error()).__name__
    assert event.messages == [] and run.memory.summary == ""


async def test_an_http_request_timeout_is_retried(store: Store) -> None:
    brain = Brain(ModelHTTPError(408, "fn", "request timeout"), "ok")
    agent = notes_agent(brain, summarize(dest="done", retries=2))
    run = await agent.start(store, Notes(topic="t"))
    await run.until_done()
    assert (run.status, brain.calls) == ("done", 2)


async def test_a_step_that_runs_over_its_timeout_is_cancelled_and_retried(store: Store) -> None:
    calls = 0

    async def slow_then_quick(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        nonlocal calls
        calls += 1
        if calls == 1:
            await asyncio.sleep(30)
        return ModelResponse(parts=[TextPart("quick")])

    agent = Agent(
        name="slow", memory=Notes, model=FunctionModel(slow_then_quick), initial="new",
        final=["done"], transitions=[summarize(dest="done", timeout=0.4, retries=1)],
    )  # fmt: skip
    run = await agent.start(store, Notes(topic="t"), run_id="to")
    await run.until_done()
    assert (run.status, run.memory.summary, calls) == ("done", "quick", 2)
    [event] = await steps_of(store, "to")
    assert event.attempt == 2


# --- output that fails validation ------------------------------------------------------------


async def test_invalid_output_is_fed_back_and_the_second_answer_accepted(store: Store) -> None:
    brain = Brain({"words": -4, "lines": 1}, {"words": 4, "lines": 1})
    agent = notes_agent(
        brain, llm("count", "new", "done", prompt="count", output=Facts, into="facts")
    )
    run = await agent.start(store, Notes(topic="t"), run_id="iv")
    await run.until_done()
    assert (run.status, run.memory.facts, brain.calls) == ("done", Facts(words=4, lines=1), 2)
    # the second request told the model what was wrong with the first answer
    feedback = [
        p for m in brain.seen[1] for p in m.parts if isinstance(p, ToolReturnPart | RetryPromptPart)
    ]
    wrong = validation_error(Facts, {"words": -4, "lines": 1}).errors()[0]["msg"]  # pydantic's
    assert feedback and wrong in str(feedback[0].content)
    [event] = await steps_of(store, "iv")
    assert event.usage == {"requests": 2, "input_tokens": 200, "output_tokens": 20}
    assert event.patch == {"facts": {"words": 4, "lines": 1}}


def keeps_failing(on_error: str | None) -> tuple[Brain, Agent[Notes]]:
    bad = {"words": -1, "lines": -1}
    brain = Brain(bad, bad, bad, bad)
    count = llm(
        "count", "new", "done", prompt="count", output=Facts, into="facts", output_retries=1,
        on_error=on_error,
    )  # fmt: skip
    apology = tool("apologize", "sorry", "closed", lambda m: "could not count", into="verdict")
    states = [count, apology] if on_error else [count]
    return brain, notes_agent(brain, *states, on_error="failed")


async def test_output_that_keeps_failing_fails_the_run_with_the_error_on_the_event(
    store: Store,
) -> None:
    brain, agent = keeps_failing(on_error=None)
    run = await agent.start(store, Notes(topic="t"), run_id="kf")
    await run.until_done()
    assert (run.state, run.status) == ("failed", "failed")
    assert brain.calls == 2  # the first answer and one retry (output_retries=1), no more
    [event] = await steps_of(store, "kf")
    assert (event.kind, event.source, event.dest) == ("error", "new", "failed")
    assert event.error is not None
    assert event.error["type"] == "UnexpectedModelBehavior"
    # pydantic-ai's own words for it, as a plain pydantic-ai agent of the step gets them
    bad = {"words": -1, "lines": -1}
    plain = PydanticAgent(Brain(bad, bad).model(), output_type=Facts, retries=1)
    with pytest.raises(UnexpectedModelBehavior) as caught:
        await plain.run("count")
    assert event.error["message"] == str(caught.value)
    assert run.memory.facts is None and event.patch == {}


async def test_output_that_keeps_failing_goes_to_the_steps_on_error_state(store: Store) -> None:
    _, agent = keeps_failing(on_error="sorry")
    run = await agent.start(store, Notes(topic="t"), run_id="ke")
    await run.until_done()
    assert (run.state, run.status, run.memory.verdict) == ("closed", "done", "could not count")
    error, apology = await steps_of(store, "ke")
    assert (error.kind, error.dest, error.status) == ("error", "sorry", "running")
    assert error.error is not None and error.error["type"] == "UnexpectedModelBehavior"
    assert (apology.trigger, apology.source) == ("apologize", "sorry")


async def test_requests_paid_for_by_a_failed_step_are_recorded(store: Store) -> None:
    brain, agent = keeps_failing(on_error=None)
    run = await agent.start(store, Notes(topic="t"), run_id="kp")
    await run.until_done()
    [event] = await steps_of(store, "kp")
    assert event.usage is not None and event.usage["requests"] == brain.calls


# --- routes ------------------------------------------------------------------------------------


def triage(brain: Brain) -> Agent[Notes]:
    return notes_agent(
        brain,
        llm("triage", "new", None, prompt=lambda m: f"Close or escalate: {m.topic}?",
            routes={"close": "closed", "escalate": "escalated"}),
    )  # fmt: skip


@pytest.mark.parametrize(("answer", "state"), [("close", "closed"), ("escalate", "escalated")])
async def test_the_model_answers_a_route_name_and_the_run_goes_there(
    store: Store, answer: str, state: str
) -> None:
    brain = Brain(answer)
    run = await triage(brain).start(store, Notes(topic="refund"), run_id="rt")
    await run.until_done()
    assert (run.state, run.status) == (state, "done")
    # the model may only answer one of the route names
    [schema] = [t.parameters_json_schema for t in brain.infos[0].output_tools]
    assert schema["properties"]["response"]["enum"] == ["close", "escalate"]
    [event] = await steps_of(store, "rt")
    assert (event.output, event.dest) == (answer, state)


async def test_an_answer_that_is_no_route_is_fed_back_then_corrected(store: Store) -> None:
    brain = Brain("maybe later", "escalate")
    run = await triage(brain).start(store, Notes(topic="refund"))
    await run.until_done()
    assert (run.state, brain.calls) == ("escalated", 2)


async def test_an_answer_that_stays_no_route_fails_the_run(store: Store) -> None:
    brain = Brain("maybe", "perhaps")
    run = await triage(brain).start(store, Notes(topic="refund"), run_id="rn")
    await run.until_done()
    assert (run.state, run.status, brain.calls) == ("new", "failed", 2)
    [event] = await steps_of(store, "rn")
    assert event.error is not None and event.error["type"] == "UnexpectedModelBehavior"


# --- checking models before anything runs ----------------------------------------------------


def test_check_models_names_an_unknown_model() -> None:
    agent = notes_agent(Brain(), summarize(dest="done")).with_model("nonsense:foo")
    with pytest.raises(ValueError, match=r"llm step 'summarize'") as caught:
        agent.check_models()
    assert str(ModelRefused("nonsense:foo")) in str(caught.value)
    assert "\n" not in str(caught.value)


def test_check_models_names_a_missing_api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    agent = notes_agent(Brain(), summarize(dest="done")).with_model("openai:gpt-4o-mini")
    with pytest.raises(ValueError, match=r"llm step 'summarize'") as caught:
        agent.check_models()
    assert str(ModelRefused("openai:gpt-4o-mini")) in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_steps_own_model_is_checked_too() -> None:
    agent = notes_agent(
        Brain(),
        summarize(),
        llm("judge", "summarized", "done", prompt="judge", model="nonsense:bar"),
    )
    with pytest.raises(ValueError, match=r"llm step 'judge'.*'nonsense:bar'"):
        agent.check_models()


def test_check_models_sends_no_request_and_accepts_a_model_object() -> None:
    brain = Brain()
    notes_agent(brain, summarize(dest="done")).check_models()
    assert brain.calls == 0
