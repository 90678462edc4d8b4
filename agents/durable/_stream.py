"""Streamed model requests of a `DurableAgent`: pydantic-ai's own events, live, from the
durable step that makes the request.

With an event stream handler (`DurableAgent.run(event_stream_handler=...)`,
`DurableAgent.run_stream_events()`), pydantic-ai asks the model for a stream. The journal's
model answers with a stream whose events come from the durable `model_request` step as it
streams from the real model: the step runs the wrapped model's own streaming request and
relays its events as they arrive (also onto the run's live channel, for watchers in other
processes), then commits the response; the stream ends once the commit is done, and its
`get()` is the committed response, so what pydantic-ai continues with is what was committed.
A request the history already answers streams the committed response again (one start and
end per part, no deltas) and sends nothing. Events of a try that failed and was retried
are relayed too, before the retried try's. `JournaledModel` is the model wrapper through which
the journal answers every request of the run, plain or streamed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from pydantic_ai import RunContext
from pydantic_ai.messages import (
    FinalResultEvent,
    ModelMessage,
    ModelMessagesTypeAdapter,
    ModelResponse,
    ModelResponseStreamEvent,
)
from pydantic_ai.models import Model, ModelRequestParameters, StreamedResponse
from pydantic_ai.models.wrapper import WrapperModel
from pydantic_ai.settings import ModelSettings
from pydantic_ai.usage import RequestUsage

from statemachine import StepContext
from statemachine.engine import StepResult

from ..steps._llm_stream import forward
from ._steps import MODEL_REQUEST, DurableMemory

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from pydantic_ai.messages import ModelRequest

    from storage import Event


class Journal(Protocol):
    """What a streamed request needs of the journal (`_durable_journal.Journal` is it)."""

    def next_request(
        self, messages: list[ModelMessage]
    ) -> tuple[ModelRequest | None, ModelResponse | None]: ...

    async def fire(
        self, trigger: str, op: Callable[[StepContext], Awaitable[StepResult[DurableMemory]]]
    ) -> Event: ...

    async def paid_request(
        self,
        ctx: StepContext,
        wrapped: Model,
        request: ModelRequest | None,
        send: Callable[[], Awaitable[ModelResponse]],
    ) -> StepResult[DurableMemory]: ...

    def committed_request(self, request: ModelRequest | None, event: Event) -> ModelResponse: ...

    async def model_request(
        self,
        wrapped: Model,
        messages: list[ModelMessage],
        settings: ModelSettings | None,
        params: ModelRequestParameters,
    ) -> ModelResponse: ...


__all__ = ["JournaledModel", "journaled_stream"]


@asynccontextmanager
async def journaled_stream(
    journal: Journal,
    wrapped: Model,
    messages: list[ModelMessage],
    settings: ModelSettings | None,
    params: ModelRequestParameters,
    run_context: RunContext[Any] | None,
) -> AsyncIterator[StreamedResponse]:
    """The stream of one model request of the journal's run (see the module doc)."""
    request, replayed = journal.next_request(messages)
    if replayed is not None:
        yield _Replayed(params, replayed)
        return
    events: asyncio.Queue[tuple[ModelResponseStreamEvent, ModelResponse] | None] = asyncio.Queue()

    async def op(ctx: StepContext) -> StepResult[DurableMemory]:
        async def send() -> ModelResponse:
            # The last tokens still queued when the stream ends go with the request's commit.
            async with wrapped.request_stream(messages, settings, params, run_context) as s:
                async for event in s:
                    events.put_nowait((event, s.get()))  # the response as of this event
                    forward(ctx.live, event)
                return s.get()

        return await journal.paid_request(ctx, wrapped, request, send)

    committing = asyncio.create_task(journal.fire(MODEL_REQUEST, op))
    committing.add_done_callback(lambda _: events.put_nowait(None))
    live = _Relayed(params, wrapped, events, committing, lambda e: journal.committed_request(
        request, e))  # fmt: skip
    try:
        yield live
    finally:
        if not committing.done():  # the consumer stopped early: so does the request
            committing.cancel()
            with contextlib.suppress(BaseException):
                await committing


class _Relayed(StreamedResponse):
    """The events of the durable step's streamed request, as they arrive; then the commit."""

    def __init__(
        self,
        params: ModelRequestParameters,
        model: Model,
        events: asyncio.Queue[tuple[ModelResponseStreamEvent, ModelResponse] | None],
        committing: asyncio.Task[Event],
        committed: Any,
    ) -> None:
        super().__init__(model_request_parameters=params)
        self._model = model
        self._events = events
        self._committing = committing
        self._committed = committed
        self._response: ModelResponse | None = None
        self._so_far: ModelResponse | None = None
        """The response as of the last event relayed (what a plain stream's `get()` gives)."""
        self._started = datetime.now(UTC)

    def __aiter__(self) -> AsyncIterator[ModelResponseStreamEvent]:
        if self._event_iterator is None:
            self._event_iterator = self._relay()
        return self._event_iterator

    async def _relay(self) -> AsyncIterator[ModelResponseStreamEvent]:
        while (item := await self._events.get()) is not None:
            event, self._so_far = item
            if isinstance(event, FinalResultEvent):
                self.final_result_event = event
            yield event
        self._response = self._committed(self._committing.result())  # the step's error, if any
        self._finished = True

    async def _get_event_iterator(self) -> AsyncIterator[ModelResponseStreamEvent]:
        async for event in self._relay():  # pragma: no cover  (`__aiter__` relays directly)
            yield event

    def get(self) -> ModelResponse:
        if self._response is not None:
            return _copy(self._response)
        return _copy(self._so_far) if self._so_far is not None else super().get()

    @property
    def usage(self) -> RequestUsage:
        if self._response is not None:
            return self._response.usage
        return self._so_far.usage if self._so_far is not None else self._usage

    @property
    def model_name(self) -> str:
        return self._response.model_name or "" if self._response else self._model.model_name

    @property
    def provider_name(self) -> str | None:
        return self._response.provider_name if self._response else self._model.system

    @property
    def provider_url(self) -> str | None:
        return self._response.provider_url if self._response else None

    @property
    def timestamp(self) -> datetime:
        return self._response.timestamp if self._response else self._started


class _Replayed(StreamedResponse):
    """A committed response, streamed again: nothing is sent to the model."""

    def __init__(self, params: ModelRequestParameters, response: ModelResponse) -> None:
        super().__init__(model_request_parameters=params)
        self._response = response

    async def _get_event_iterator(self) -> AsyncIterator[ModelResponseStreamEvent]:
        for index, part in enumerate(self._response.parts):
            yield self._parts_manager.handle_part(vendor_part_id=index, part=part)

    def get(self) -> ModelResponse:
        return _copy(self._response)

    @property
    def usage(self) -> RequestUsage:
        return self._response.usage

    @property
    def model_name(self) -> str:
        return self._response.model_name or ""

    @property
    def provider_name(self) -> str | None:
        return self._response.provider_name

    @property
    def provider_url(self) -> str | None:
        return self._response.provider_url

    @property
    def timestamp(self) -> datetime:
        return self._response.timestamp


def _copy(response: ModelResponse) -> ModelResponse:
    copy = ModelMessagesTypeAdapter.validate_python(
        ModelMessagesTypeAdapter.dump_python([response])
    )
    assert isinstance(copy[0], ModelResponse)
    return copy[0]


class JournaledModel(WrapperModel):
    """The model, its requests answered by the journal `journal()` gives (the model itself
    while it gives none)."""

    def __init__(self, wrapped: Model, journal: Callable[[], Journal | None]) -> None:
        super().__init__(wrapped)
        self.journal = journal

    async def request(
        self,
        messages: list[ModelMessage],
        model_settings: ModelSettings | None,
        model_request_parameters: ModelRequestParameters,
    ) -> ModelResponse:
        journal = self.journal()
        if journal is None:
            return await self.wrapped.request(messages, model_settings, model_request_parameters)
        return await journal.model_request(
            self.wrapped, messages, model_settings, model_request_parameters
        )

    @asynccontextmanager
    async def request_stream(
        self,
        messages: list[ModelMessage],
        model_settings: ModelSettings | None,
        model_request_parameters: ModelRequestParameters,
        run_context: RunContext[Any] | None = None,
    ) -> AsyncIterator[StreamedResponse]:
        journal = self.journal()
        if journal is None:
            async with self.wrapped.request_stream(
                messages, model_settings, model_request_parameters, run_context
            ) as stream:
                yield stream
            return
        async with journaled_stream(
            journal, self.wrapped, messages, model_settings, model_request_parameters,
            run_context,
        ) as stream:  # fmt: skip
            yield stream
