"""The journal: the capability that makes a pydantic-ai run's model requests and tool calls
durable transitions of the DurableAgent machine (`_durable_steps`).

When a run is resumed, in any process, `Agent.run` is simply run again: each model request and
tool call already committed is answered from the history (nothing is sent or run), and the
first one that is not goes live and commits. What happens between them is pydantic-ai's own
code, run again, so it behaves exactly as in a plain run (and must be deterministic: given the
same model responses and tool results it must do the same, as in any replaying engine).
"""

from __future__ import annotations

import asyncio
import contextvars
import copy
import dataclasses
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pydantic_core
from pydantic import JsonValue
from pydantic_ai import DeferredToolRequests, DeferredToolResults, ModelRetry, RunContext
from pydantic_ai.capabilities import (
    AbstractCapability,
    CapabilityOrdering,
    WrapperCapability,
)
from pydantic_ai.durable_exec import durable_unit_scope, record_durable_unit
from pydantic_ai.messages import ModelMessage, ModelMessagesTypeAdapter, ModelRequest, ModelResponse
from pydantic_ai.models import Model, ModelRequestParameters
from pydantic_ai.output import OutputContext
from pydantic_ai.settings import ModelSettings
from pydantic_ai.tools import ToolDefinition
from pydantic_ai.toolsets import AbstractToolset, ToolsetTool, WrapperToolset

from statemachine import Run, RunError, StepContext
from statemachine.engine import StepResult
from storage import Event

from ..spending._budget import BudgetReached
from ..spending._paid import Spending, model_label, paid_request
from ..steps._tool_engine import args_digest, call_tool, replay_outcome
from ._outputs import RESULTS, answers_in_run, output_functions, rebuilt, results
from ._steps import (
    DECISION,
    DEFER,
    FAIL,
    MODEL_REQUEST,
    OUTPUT,
    OUTPUT_CALL,
    PENDING,
    REQUESTS,
    TOOL_CALL,
    Answer,
    CallbackFailed,
    DurableMemory,
    DurableRunFailed,
    Pending,
    Round,
    RunMoved,
    rounds_of,
)
from ._stream import JournaledModel
from ._tool_context import NoEnqueue, add_usage, usage_json

__all__ = [
    "Journal",
    "JournaledHandler",
    "JournaledModel",
    "JournaledToolset",
    "answers_in_run",
    "idempotency_key",
    "output_functions",
]

_KEY: contextvars.ContextVar[str | None] = contextvars.ContextVar("agentfsm_call_key", default=None)


def idempotency_key() -> str:
    """Inside a tool a `DurableAgent` runs: the call's idempotency key (its transition's key
    plus the `tool_call_id`), the same on every try in any process."""
    key = _KEY.get()
    if key is None:
        raise LookupError("idempotency_key() is only known inside a DurableAgent's tool call")
    return key


@dataclass(eq=False)
class Journal(AbstractCapability[Any]):
    """The capability that makes model requests and tool calls durable (see the module doc).

    One per `DurableAgent.run` call: it holds what the run committed so far and where the
    replay is.
    """

    run: Run[DurableMemory] = field(repr=False)
    events: list[Event] = field(repr=False)
    notify: Callable[[Event], object] | None = field(default=None, repr=False)
    segment: int = 0
    """Which `Agent.run` of the durable run this is (each deferral round starts another)."""
    model_index: int = 0
    """Model requests this replay has asked for so far."""
    answers_in: dict[str, Answer] = field(default_factory=dict)
    """The answers the current segment was started with, by tool_call_id."""
    _responses: list[ModelResponse] = field(default_factory=list, repr=False)
    _requests: list[ModelRequest | None] = field(default_factory=list, repr=False)
    _tools: dict[tuple[int, int, str], dict[str, JsonValue]] = field(default_factory=dict)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)
    spending: Spending | None = field(default=None, repr=False)
    output_functions: dict[str, Callable[..., Any]] = field(default_factory=dict, repr=False)
    """The run's output functions by name: what a committed output value is rebuilt with."""
    _outputs: dict[tuple[int, int, int], dict[str, JsonValue]] = field(default_factory=dict)
    _output_calls: dict[tuple[int, int], int] = field(default_factory=dict, repr=False)
    _decisions: dict[tuple[int, int, int, str], JsonValue] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for e in self.events:
            if e.kind in ("error", "halt"):
                continue
            if e.trigger == MODEL_REQUEST:
                messages = ModelMessagesTypeAdapter.validate_python(e.messages)
                response = messages[-1]
                assert isinstance(response, ModelResponse)
                self._responses.append(response)
                request = messages[-2] if len(messages) > 1 else None
                self._requests.append(request if isinstance(request, ModelRequest) else None)
            elif e.trigger == TOOL_CALL and isinstance(e.output, dict):
                o = e.output
                where = (int(str(o["segment"])), int(str(o["after"])), str(o["tool_call_id"]))
                self._tools[where] = o
            elif e.trigger == OUTPUT_CALL and isinstance(e.output, dict):
                o = e.output
                at = (int(str(o["segment"])), int(str(o["after"])), int(str(o["call"])))
                self._outputs[at] = o
            elif e.trigger == DECISION and isinstance(e.output, dict):
                o = e.output
                asked = (int(str(o["segment"])), int(str(o["after"])), int(str(o["handler"])),
                         str(o["calls"]))  # fmt: skip
                self._decisions[asked] = o.get("results")
        self.rounds = rounds_of(self.events)

    def get_ordering(self) -> CapabilityOrdering:
        return CapabilityOrdering(position="innermost")

    def get_wrapper_model(self, model: Model) -> Model | None:
        return JournaledModel(model, lambda: self)

    def get_wrapper_toolset(self, toolset: AbstractToolset[Any]) -> AbstractToolset[Any] | None:
        return JournaledToolset(toolset, journal=lambda: self)

    async def wrap_tool_execute(
        self,
        ctx: RunContext[Any],
        *,
        call: Any,
        tool_def: ToolDefinition,
        args: dict[str, Any],
        handler: Callable[[dict[str, Any]], Awaitable[Any]],
    ) -> Any:
        """The approval gate: a call answered by an approval runs only if approved, and only
        with the exact arguments approved (checked against the committed digest)."""
        answer = self.answers_in.get(call.tool_call_id)
        if answer is not None and answer.kind == "approval":
            if not answer.approved:
                raise RunError(f"tool call {call.tool_call_id!r} was denied: it must not run")
            if answer.digest != args_digest(call.args_as_dict()):
                raise RunError(
                    f"tool call {call.tool_call_id!r} would run with arguments other than the"
                    " ones approved: refused"
                )
        return await handler(args)

    async def wrap_output_process(
        self,
        ctx: RunContext[Any],
        *,
        output_context: OutputContext,
        output: Any,
        handler: Callable[[Any], Awaitable[Any]],
    ) -> Any:
        """An output function's call, journaled: its value (or its `ModelRetry`) is committed,
        and a replay answers from the history instead of calling it again."""
        if not output_context.has_function or ctx.partial_output:
            return await handler(output)  # validation alone: the same on every replay
        point = (self.segment, self.model_index)
        nth = self._output_calls.get(point, 0)
        self._output_calls[point] = nth + 1
        at = (*point, nth)
        name = output_context.function_name or ""
        done = self._outputs.get(at)
        if done is not None:
            record_durable_unit(executed=False)
            if "retry" in done:
                raise ModelRetry(str(done["retry"]))
            return rebuilt(self.output_functions.get(name), done.get("result"))
        if self.run.status != "running":  # a run finished by an older version: not journaled
            return await handler(output)
        values: list[Any] = []

        async def op(sctx: StepContext) -> StepResult[DurableMemory]:
            out: dict[str, JsonValue] = {"segment": at[0], "after": at[1], "call": at[2],
                                         "function": name}  # fmt: skip
            try:
                values[:] = [await handler(output)]
            except ModelRetry as retry:
                out["retry"] = retry.message
            else:
                out["result"] = pydantic_core.to_jsonable_python(values[0], fallback=repr)
            return StepResult(memory=self.run.memory, output=out, subkey=str(nth))

        event = await self.fire(OUTPUT_CALL, op)
        record_durable_unit(executed=True)
        assert isinstance(event.output, dict)
        self._outputs[at] = event.output
        if "retry" in event.output:
            raise ModelRetry(str(event.output["retry"]))
        return values[0]

    async def decision(
        self,
        handler: int,
        requests: DeferredToolRequests,
        ask: Callable[[], Awaitable[DeferredToolResults | None]],
    ) -> DeferredToolResults | None:
        """What the run's `handler`-th deferred-call handler (`HandleDeferredToolCalls`) answers
        to `requests`, journaled: committed as given, and given again on replay without asking."""
        ids = ",".join(sorted(c.tool_call_id for c in [*requests.approvals, *requests.calls]))
        asked = (self.segment, self.model_index, handler, ids)
        if asked in self._decisions:
            record_durable_unit(executed=False)
            return results(self._decisions[asked])
        if self.run.status != "running":
            return await ask()

        async def op(sctx: StepContext) -> StepResult[DurableMemory]:
            results = await ask()
            dumped: JsonValue = (
                None if results is None else RESULTS.dump_python(results, mode="json")
            )
            out: dict[str, JsonValue] = {
                "segment": asked[0], "after": asked[1], "handler": handler, "calls": ids,
                "results": dumped,
            }  # fmt: skip
            return StepResult(memory=self.run.memory, output=out, subkey=f"{handler}:{ids}")

        event = await self.fire(DECISION, op)
        record_durable_unit(executed=True)
        assert isinstance(event.output, dict)
        self._decisions[asked] = event.output.get("results")
        return results(event.output.get("results"))

    # The operations -----------------------------------------------------------------------

    async def fire(
        self, trigger: str, op: Callable[[StepContext], Awaitable[StepResult[DurableMemory]]]
    ) -> Event:
        """Commit one transition whose step is `op`, in this process; raises the step's own
        error when it gave up (the run is then failed)."""
        async with self._lock:
            run = self.run
            if run.status != "running":
                raise self.stopped()
            pending = Pending(kind=trigger, op=op, run=run, seq=run.seq)
            token = PENDING.set(pending)
            try:
                event = await run.step()
            finally:
                PENDING.reset(token)
            if event is None:  # the run is no longer running, and this process did not move it
                if run.seq != pending.seq:
                    raise RunMoved(run.run_id)
                raise self.stopped()
            self.events.append(event)
            if self.notify is not None:
                try:
                    self.notify(event)
                except Exception as exc:
                    raise CallbackFailed(exc) from exc
            if event.kind == "error":
                if pending.error is not None:
                    raise pending.error
                raise self.stopped()
            if event.kind == "halt":
                raise BudgetReached(run.run_id, event.output)
            return event

    @property
    def answered(self) -> int:
        """How many model requests the history answers (committed so far)."""
        return len(self._responses)

    def stopped(self) -> Exception:
        run = self.run
        if run.status == "failed":
            error = next((e.error for e in reversed(self.events) if e.error), None)
            return DurableRunFailed(run.run_id, error)
        return RunError(f"run {run.run_id!r} is {run.status} in state {run.state!r}")

    async def model_request(
        self,
        wrapped: Model,
        messages: list[ModelMessage],
        settings: ModelSettings | None,
        params: ModelRequestParameters,
    ) -> ModelResponse:
        request, replayed = self.next_request(messages)
        if replayed is not None:
            return replayed

        async def op(ctx: StepContext) -> StepResult[DurableMemory]:
            return await self.paid_request(
                ctx, wrapped, request, lambda: wrapped.request(messages, settings, params)
            )

        return self.committed_request(request, await self.fire(MODEL_REQUEST, op))

    async def paid_request(
        self,
        ctx: StepContext,
        wrapped: Model,
        request: ModelRequest | None,
        send: Callable[[], Awaitable[ModelResponse]],
    ) -> StepResult[DurableMemory]:
        """One model request (`send`, plain or streamed) as the model-request step: the one
        paid request (`agents.spending._paid`), and what it adds to the conversation."""
        response = await paid_request(self.spending, None, ctx, model_label(wrapped), send)
        sent: list[ModelMessage] = [response] if request is None else [request, response]
        dumped: list[JsonValue] = ModelMessagesTypeAdapter.dump_python(sent, mode="json")
        return StepResult(memory=self.run.memory, usage=dict(ctx.spent), messages=dumped)

    def next_request(
        self, messages: list[ModelMessage]
    ) -> tuple[ModelRequest | None, ModelResponse | None]:
        """The request this model request sends, and its committed response when it was
        committed before (then nothing is sent: the replay answers it)."""
        index = self.model_index
        self.model_index += 1
        request = messages[-1] if messages and isinstance(messages[-1], ModelRequest) else None
        if index >= len(self._responses):
            return request, None
        committed = self._requests[index]
        if request is not None and committed is not None:
            _restamp(request, committed)
        record_durable_unit(executed=False)
        return request, _copy(self._responses[index])

    def committed_request(self, request: ModelRequest | None, event: Event) -> ModelResponse:
        """The response of a model request this process just committed as `event`."""
        record_durable_unit(executed=True)
        messages_back = ModelMessagesTypeAdapter.validate_python(event.messages)
        response = messages_back[-1]
        assert isinstance(response, ModelResponse)
        self._responses.append(response)
        self._requests.append(request)
        return _copy(response)

    async def tool_call(
        self,
        toolset: AbstractToolset[Any],
        name: str,
        tool_args: dict[str, Any],
        ctx: RunContext[Any],
        tool: ToolsetTool[Any],
    ) -> Any:
        call_id = ctx.tool_call_id or name
        where = (self.segment, self.model_index, call_id)
        done = self._tools.get(where)
        if done is not None:
            if done.get("tool") != name:
                raise RunError(
                    f"run {self.run.run_id!r}: the replay asked tool {name!r} for call"
                    f" {call_id!r}, which the history has as {done.get('tool')!r}: the agent"
                    " no longer does what it did when the run started"
                )
            record_durable_unit(executed=False)
            add_usage(ctx, done.get("usage"))
            return replay_outcome(done)
        args: JsonValue = pydantic_core.to_jsonable_python(tool_args, fallback=repr)
        found: dict[str, JsonValue] = {"segment": where[0], "after": where[1]}

        async def invoke(key: str) -> Any:
            token = _KEY.set(key)
            before = copy.deepcopy(ctx.usage)
            try:
                # A durable unit for pydantic-ai: what a replay would not do again is refused
                # inside it (`RunContext.submit_output`), as on pydantic-ai's own engines.
                with durable_unit_scope():
                    guarded = dataclasses.replace(ctx, pending_messages=NoEnqueue())
                    return await toolset.call_tool(name, tool_args, guarded, tool)
            finally:
                _KEY.reset(token)
                # What the tool added to the run's usage (an agent it ran with
                # `usage=ctx.usage`): recorded with the call, added again on replay.
                added = usage_json(ctx.usage - before)
                if added:
                    found["usage"] = added

        async def op(sctx: StepContext) -> StepResult[DurableMemory]:
            return await call_tool(
                sctx, self.run.memory, tool=name, call_id=call_id, args=args, call=invoke,
                where=found,
            )  # fmt: skip

        event = await self.fire(TOOL_CALL, op)
        record_durable_unit(executed=True)
        assert isinstance(event.output, dict)
        self._tools[where] = event.output
        return replay_outcome(event.output)

    async def defer(self, requests: DeferredToolRequests) -> None:
        dumped: JsonValue = REQUESTS.dump_python(requests, mode="json")

        async def op(ctx: StepContext) -> StepResult[DurableMemory]:
            new = self.run.memory.model_copy(update={"deferred": dumped})
            return StepResult(memory=new, output={"segment": self.segment, "requests": dumped})

        await self.fire(DEFER, op)
        self.rounds.append(Round(requests=requests))

    async def finish(self, output: Any) -> None:
        value: JsonValue = pydantic_core.to_jsonable_python(output, fallback=repr)

        async def op(ctx: StepContext) -> StepResult[DurableMemory]:
            return StepResult(memory=self.run.memory.model_copy(update={"output": value}))

        await self.fire(OUTPUT, op)

    async def fail(self, error: BaseException) -> None:
        async def op(ctx: StepContext) -> StepResult[DurableMemory]:
            raise error

        try:
            await self.fire(FAIL, op)
        except BaseException as raised:
            if raised is not error:
                raise


@dataclass
class JournaledHandler(WrapperCapability[Any]):
    """A capability that answers deferred calls in the run (`HandleDeferredToolCalls`), its
    answers journaled (`Journal.decision`): a replay does not ask it again."""

    journal: Journal | None = field(default=None, kw_only=True, repr=False)
    index: int = field(default=0, kw_only=True)

    async def handle_deferred_tool_calls(
        self, ctx: RunContext[Any], *, requests: DeferredToolRequests
    ) -> DeferredToolResults | None:
        if self.journal is None:
            return await self.wrapped.handle_deferred_tool_calls(ctx, requests=requests)
        return await self.journal.decision(
            self.index,
            requests,
            lambda: self.wrapped.handle_deferred_tool_calls(ctx, requests=requests),
        )


def _restamp(request: ModelRequest, committed: ModelRequest) -> None:
    """Give a replayed request the times it was first sent with (they are all that differ)."""
    request.timestamp = committed.timestamp
    for part, first in zip(request.parts, committed.parts, strict=False):
        if part.part_kind == first.part_kind and hasattr(first, "timestamp"):
            setattr(part, "timestamp", first.timestamp)  # noqa: B010  (not every part has one)


def _copy(response: ModelResponse) -> ModelResponse:
    """A fresh copy of a committed response (pydantic-ai may change the one it is given)."""
    dumped = ModelMessagesTypeAdapter.dump_python([response])
    copy = ModelMessagesTypeAdapter.validate_python(dumped)[0]
    assert isinstance(copy, ModelResponse)
    return copy


@dataclass
class JournaledToolset(WrapperToolset[Any]):
    """The toolset, its calls made through the journal `journal()` gives (directly while it
    gives none)."""

    journal: Callable[[], Journal | None] = field(kw_only=True, repr=False)

    async def call_tool(
        self, name: str, tool_args: dict[str, Any], ctx: RunContext[Any], tool: ToolsetTool[Any]
    ) -> Any:
        journal = self.journal()
        if journal is None:
            return await self.wrapped.call_tool(name, tool_args, ctx, tool)
        return await journal.tool_call(self.wrapped, name, tool_args, ctx, tool)
