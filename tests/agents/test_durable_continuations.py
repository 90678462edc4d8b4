"""pydantic-ai's durable-execution scenarios of a response the provider suspends and then
completes (Anthropic `pause_turn`, OpenAI background mode), plain vs DurableAgent as in
test_durable_parity.py: the merged answer, a history ending in a suspended response, a usage
limit, a failed continuation, too many suspensions, a delay, and the same streamed.
docs/durable-scenarios.md names each upstream test and the test here that covers it."""

from __future__ import annotations

import asyncio
import itertools
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from pydantic_ai import (
    Agent,
    RunContext,
)
from pydantic_ai.exceptions import (
    UnexpectedModelBehavior,
    UsageLimitExceeded,
)
from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    ModelResponse,
    ModelResponseStreamEvent,
    TextPart,
    ToolCallPart,
    UserPromptPart,
)
from pydantic_ai.models import Model, ModelRequestParameters, StreamedResponse
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.run import AgentRunResultEvent
from pydantic_ai.settings import ModelSettings
from pydantic_ai.usage import RequestUsage, UsageLimits

from agents import DurableAgent
from agents.durable import AgentfsmDurability, _sleep
from agents.errors import DurableRunFailed
from storage import Event, Store

from ..conftest import make_store
from .test_durable_parity import Ran, parity
from .test_durable_streaming import events_json, same_events

_ids = itertools.count()


@pytest_asyncio.fixture(params=["embedded", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    s = await make_store(request.param, request, tmp_path)
    yield s
    await s.close()


# A response the provider suspends, then completes (Anthropic pause_turn, OpenAI background) ---


def segment(text: str, state: Any = "complete", *, rid: str, tokens: int) -> ModelResponse:
    return ModelResponse(
        parts=[TextPart(text)], model_name="scripted", provider_name="scripted",
        provider_response_id=rid, usage=RequestUsage(input_tokens=tokens, output_tokens=tokens),
        state=state,
    )  # fmt: skip


class Scripted(Model):
    """pydantic-ai's own scripted continuation model (tests/continuation_utils.py upstream),
    non-streaming: each request gives the next response of the script."""

    def __init__(self, ran: Ran, *responses: ModelResponse) -> None:
        super().__init__()
        self.ran, self.responses = ran, list(responses)
        self.cancelled: list[str | None] = []

    @property
    def model_name(self) -> str:
        return "scripted"

    @property
    def system(self) -> str:
        return "scripted"

    async def request(
        self,
        messages: list[ModelMessage],
        model_settings: ModelSettings | None,
        model_request_parameters: ModelRequestParameters,
    ) -> ModelResponse:
        self.ran("request")
        return self.responses.pop(0)

    async def cancel_suspended_response(self, response: ModelResponse) -> None:
        self.cancelled.append(response.provider_response_id)


def chain(ran: Ran) -> Agent[None, str]:
    first = segment("The answer ", "suspended", rid="cont1", tokens=2)
    return Agent(Scripted(ran, first, segment("is 42.", rid="cont2", tokens=3)), name="chain")


async def test_a_suspended_response_continues_to_the_same_merged_answer(store: Store) -> None:
    _, result, durable, run_id = await parity(chain, store)
    assert result.output == "The answer is 42."
    assert result.usage.requests == 1
    assert [e.trigger for e in await durable.history(run_id)].count("model_request") == 2


async def test_a_history_ending_in_a_suspended_response_goes_on(store: Store) -> None:
    history: list[ModelMessage] = [
        ModelRequest(parts=[UserPromptPart("go")]),
        segment("The answer ", "suspended", rid="cont1", tokens=2),
    ]

    def resumed(ran: Ran) -> Agent[None, str]:
        return Agent(Scripted(ran, segment("is 42.", rid="cont2", tokens=3)), name="resumed")

    _, result, _, _ = await parity(resumed, store, None, message_history=history)
    assert result.output == "The answer is 42."


async def test_a_usage_limit_between_segments_cancels_the_suspended_response(
    store: Store,
) -> None:
    def going_on(ran: Ran) -> Agent[None, str]:
        model = Scripted(ran, segment("still ", "suspended", rid="c1", tokens=5),
                         segment("going ", "suspended", rid="c2", tokens=50))  # fmt: skip
        return Agent(model, name="going-on")

    limits = UsageLimits(total_tokens_limit=20)
    plain_agent = going_on(Ran())
    with pytest.raises(UsageLimitExceeded) as plain:
        await plain_agent.run("go", usage_limits=limits)
    durable_agent = going_on(Ran())
    with pytest.raises(UsageLimitExceeded) as ours:
        await DurableAgent(durable_agent, store=store).run(
            "go", run_id=f"limit-{next(_ids)}", usage_limits=limits
        )
    assert str(ours.value) == str(plain.value)
    assert isinstance(plain_agent.model, Scripted) and isinstance(durable_agent.model, Scripted)
    assert durable_agent.model.cancelled == plain_agent.model.cancelled == ["c2"]


# More of a suspended response: a failed request, too many suspensions, a delay, streamed --------


class Delayed(Scripted):
    """Asks pydantic-ai to wait `delay` seconds before continuing a suspended response."""

    delay = 0.01

    def continuation_delay(self, response: ModelResponse) -> float | None:
        return self.delay


def delayed(ran: Ran, delay: float = 0.01, *capabilities: Any) -> Agent[None, str]:
    first = segment("The answer ", "suspended", rid="cont1", tokens=2)
    model = Delayed(ran, first, segment("is 42.", rid="cont2", tokens=3))
    model.delay = delay
    return Agent(model, name="delayed", capabilities=list(capabilities))


def sleeps(events: list[Event]) -> list[dict[str, Any]]:
    return [e.output for e in events if e.trigger == "sleep" and isinstance(e.output, dict)]


async def test_a_delay_before_continuing_is_kept(store: Store) -> None:
    _, result, durable, run_id = await parity(delayed, store)
    assert result.output == "The answer is 42."
    events = await durable.history(run_id)  # after parity read the run back too
    assert [e.trigger for e in events] == [
        "start", "model_request", "sleep", "model_request", "output"
    ]  # fmt: skip
    (slept,) = sleeps(events)
    # Its wake-up time, committed before the wait: the delay from when the step ran.
    assert (slept["segment"], slept["after"], slept["nth"], slept["seconds"]) == (0, 1, 0, 0.01)
    assert events[2].started_at <= slept["wake"] - 0.01 <= events[2].ended_at


class Waits:
    """Stands in for the process's wait (`agents.durable._sleep.sleep`): records each."""

    def __init__(self) -> None:
        self.seconds: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.seconds.append(seconds)


async def test_a_wait_the_history_went_past_is_not_waited_or_committed_again(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    waits = Waits()
    monkeypatch.setattr(_sleep, "sleep", waits)
    ran = Ran()
    durable = DurableAgent(delayed(ran, 3600), store=store)
    run_id = f"past-{next(_ids)}"
    assert (await durable.run("go", run_id=run_id)).output == "The answer is 42."
    assert len(waits.seconds) == 1 and 3590 < waits.seconds[0] <= 3600
    again = await durable.run(run_id=run_id)  # replayed: its wait is over
    assert again.output == "The answer is 42."
    assert len(waits.seconds) == 1
    assert len(sleeps(await durable.history(run_id))) == 1
    assert ran.counts == {"request": 2}


async def test_an_agent_a_tool_runs_waits_plainly_inside_the_call(store: Store) -> None:
    """A plain agent run inside a tool call inherits the run's sleep: its waits are part of
    the call (committed with it), not waits of the durable run."""

    def brain(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        if len(messages) == 1:
            return ModelResponse(parts=[ToolCallPart("ask", {}, tool_call_id="c1")])
        return ModelResponse(parts=[TextPart("done")])

    outer = Agent(FunctionModel(brain), name="outer")

    @outer.tool_plain
    async def ask() -> str:
        return (await delayed(Ran()).run("go")).output

    durable = DurableAgent(outer, store=store)
    run_id = f"nested-{next(_ids)}"
    result = await asyncio.wait_for(durable.run("go", run_id=run_id), 30)
    assert result.output == "done"
    triggers = [e.trigger for e in await durable.history(run_id)]
    assert triggers == ["start", "model_request", "tool_call", "model_request", "output"]


async def test_the_capability_forms_waits_are_durable_too(store: Store) -> None:
    agent = delayed(Ran(), 0.01, AgentfsmDurability(store, name="cap"))
    run_id = f"cap-delay-{next(_ids)}"
    assert (await agent.run("go", run_id=run_id)).output == "The answer is 42."
    assert [s["seconds"] for s in sleeps(await store.history(run_id))] == [0.01]


class Broken(Scripted):
    """Fails the request that would continue a suspended response."""

    async def request(self, messages: Any, model_settings: Any, parameters: Any) -> ModelResponse:
        if not self.responses:
            self.ran("request")
            raise UnexpectedModelBehavior("the provider lost the job")
        return await super().request(messages, model_settings, parameters)


@pytest.mark.parametrize("how", ["failed", "ceiling"])
async def test_a_suspended_response_that_cannot_go_on_is_cancelled_as_plain(
    store: Store, how: str
) -> None:
    def build(ran: Ran) -> Agent[None, str]:
        if how == "failed":
            model: Scripted = Broken(ran, segment("The answer ", "suspended", rid="c1", tokens=1))
        else:  # pydantic-ai gives up after 10 continuations
            suspended = [segment(f"{i} ", "suspended", rid=f"c{i}", tokens=1) for i in range(12)]
            model = Scripted(ran, *suspended)
        return Agent(model, name=f"suspended-{how}")

    ran, ran_d = Ran(), Ran()
    plain_agent, durable_agent = build(ran), build(ran_d)
    with pytest.raises(UnexpectedModelBehavior) as plain:
        await plain_agent.run("go")
    durable = DurableAgent(durable_agent, store=store)
    run_id = f"{how}-{next(_ids)}"
    with pytest.raises(UnexpectedModelBehavior) as ours:
        await durable.run("go", run_id=run_id)
    assert str(ours.value) == str(plain.value)
    assert ran_d.counts == ran.counts
    assert isinstance(plain_agent.model, Scripted) and isinstance(durable_agent.model, Scripted)
    assert durable_agent.model.cancelled == plain_agent.model.cancelled != []
    # Read back: the same end (replayed to it, or named as the run's failure), nothing sent.
    with pytest.raises(
        (UnexpectedModelBehavior, DurableRunFailed), match=re.escape(str(plain.value))
    ):
        await durable.run(run_id=run_id)
    assert ran_d.counts == ran.counts


class StreamedSegments(Model):
    """Streams each response of the script (pydantic-ai's `ScriptedStreamedResponse`)."""

    def __init__(self, ran: Ran, *responses: ModelResponse) -> None:
        super().__init__()
        self.ran, self.responses = ran, list(responses)

    @property
    def model_name(self) -> str:
        return "scripted"

    @property
    def system(self) -> str:
        return "scripted"

    async def request(self, *args: Any) -> ModelResponse:
        raise AssertionError("streamed only")

    @asynccontextmanager
    async def request_stream(
        self,
        messages: list[ModelMessage],
        model_settings: ModelSettings | None,
        model_request_parameters: ModelRequestParameters,
        run_context: RunContext[Any] | None = None,
    ) -> AsyncIterator[StreamedResponse]:
        self.ran("request_stream")
        yield _Segment(model_request_parameters, _response=self.responses.pop(0))


@dataclass
class _Segment(StreamedResponse):
    _response: ModelResponse = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        self.provider_response_id = self._response.provider_response_id
        self.state = self._response.state
        self._usage = self._response.usage

    async def _get_event_iterator(self) -> AsyncIterator[ModelResponseStreamEvent]:
        for index, part in enumerate(self._response.parts):
            assert isinstance(part, TextPart)
            for text in ("", part.content):
                for event in self._parts_manager.handle_text_delta(vendor_part_id=index,
                                                                   content=text):  # fmt: skip
                    yield event

    @property
    def model_name(self) -> str:
        return "scripted"

    @property
    def provider_name(self) -> str:
        return "scripted"

    @property
    def provider_url(self) -> str:
        return "scripted"

    @property
    def timestamp(self) -> datetime:
        return datetime(2024, 1, 1, tzinfo=UTC)


async def test_a_streamed_suspended_response_continues_to_the_same_events(store: Store) -> None:
    def streamed(ran: Ran) -> Agent[None, str]:
        first = segment("The answer ", "suspended", rid="cont1", tokens=2)
        model = StreamedSegments(ran, first, segment("is 42.", rid="cont2", tokens=3))
        return Agent(model, name="streamed")

    async def events(agent: Any, **kwargs: Any) -> list[Any]:
        async with agent.run_stream_events(**kwargs) as stream:
            return [e async for e in stream]

    ran, ran_d = Ran(), Ran()
    plain = await events(streamed(ran), user_prompt="go")
    runs = [events_json(plain), events_json(await events(streamed(Ran()), user_prompt="go"))]
    durable = DurableAgent(streamed(ran_d), store=store)
    run_id = f"streamed-{next(_ids)}"
    got = await events(durable, user_prompt="go", run_id=run_id)
    await same_events(got, lambda: events(streamed(Ran()), user_prompt="go"), runs,
                      "the durable run's events")  # fmt: skip
    assert ran_d.counts == ran.counts == {"request_stream": 2}
    again = await events(durable, run_id=run_id)
    assert isinstance(again[-1], AgentRunResultEvent)
    assert again[-1].result.output == "The answer is 42."
    assert ran_d.counts == {"request_stream": 2}


class DelayedSegments(StreamedSegments):
    def continuation_delay(self, response: ModelResponse) -> float | None:
        return 0.01


async def test_a_streamed_runs_delay_is_committed_between_its_segments(store: Store) -> None:
    def streamed(ran: Ran) -> Agent[None, str]:
        first = segment("The answer ", "suspended", rid="cont1", tokens=2)
        model = DelayedSegments(ran, first, segment("is 42.", rid="cont2", tokens=3))
        return Agent(model, name="streamed-delay")

    durable = DurableAgent(streamed(Ran()), store=store)
    run_id = f"streamed-delay-{next(_ids)}"
    async with durable.run_stream_events("go", run_id=run_id) as stream:
        got = [e async for e in stream]
    assert isinstance(got[-1], AgentRunResultEvent)
    assert got[-1].result.output == "The answer is 42."
    events = await durable.history(run_id)
    assert [e.trigger for e in events] == [
        "start", "model_request", "sleep", "model_request", "output"
    ]  # fmt: skip


async def test_a_streamed_history_ending_in_a_suspended_response_goes_on(store: Store) -> None:
    history: list[ModelMessage] = [
        ModelRequest(parts=[UserPromptPart("go")]),
        segment("The answer ", "suspended", rid="cont1", tokens=2),
    ]

    def resumed(ran: Ran) -> Agent[None, str]:
        return Agent(StreamedSegments(ran, segment("is 42.", rid="cont2", tokens=3)), name="sr")

    async def events(agent: Any, **kwargs: Any) -> list[Any]:
        async with agent.run_stream_events(message_history=history, **kwargs) as stream:
            return [e async for e in stream]

    ran_d = Ran()
    runs = [events_json(await events(resumed(Ran()))) for _ in range(2)]
    durable = DurableAgent(resumed(ran_d), store=store)
    got = await events(durable, run_id=f"sr-{next(_ids)}")
    await same_events(got, lambda: events(resumed(Ran())), runs, "the durable run's events")
    assert isinstance(got[-1], AgentRunResultEvent)
    assert got[-1].result.output == "The answer is 42."
    assert ran_d.counts == {"request_stream": 1}
