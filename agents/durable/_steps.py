"""The machine under a `DurableAgent`: its memory, its table, and the steps of its transitions.

pydantic-ai runs the agent itself (`Agent.run`, its graph, its RunContext, retries, output
processing, history processors, capabilities). The journal (`_journal.py`), a capability
of ours that sits innermost, turns four things into committed transitions, and the run's ends
into three more:

    running --model_request--> running     one request to the model (the response is committed)
    running --tool_call------> running     one call of a tool function (its outcome is committed)
    running --output_call----> running     one call of an output function (its value is committed)
    running --decision-------> running     an in-run handler's answer to deferred calls (committed)
    running --sleep----------> running     a wait pydantic-ai makes in the run (its wake-up time)
    running --defer----------> approval    the run ended with DeferredToolRequests: park it
    approval --answer--------> approval | running    one approval, denial or external result
    running --output---------> done        the run ended with its output
    running --fail-----------> failed      pydantic-ai gave up (retries, usage limits, ...)

Which transition fires is the operation pydantic-ai asks for at that moment: each guard reads
the pending operation (`PENDING`), and refuses when the run moved on in another process since
this one read its history (the replay is then started again).
"""

from __future__ import annotations

import contextvars
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, JsonValue, TypeAdapter
from pydantic_ai import DeferredToolRequests, DeferredToolResults, ToolDenied
from pydantic_ai.messages import ModelMessagesTypeAdapter, ModelRequest, UserContent, UserPromptPart
from pydantic_ai.tools import ToolApproved

from statemachine import Run, RunError, StepContext, transition
from statemachine.engine import RetryPolicy, StepResult, Transition
from storage import Event

from .._agent import Agent
from ..steps._tool_engine import (
    MODEL_POLICY,
    TOOL_POLICY,
    StepPolicy,
    args_digest,
    tool_answer,
)

__all__ = [
    "PENDING",
    "REQUESTS",
    "SLEEP",
    "Answer",
    "CallbackFailed",
    "DurableMemory",
    "DurableRunFailed",
    "Pending",
    "Round",
    "RunMoved",
    "deferred_results",
    "dump_prompt",
    "durable_machine",
    "durable_transitions",
    "load_prompt",
    "rounds_of",
]

RUNNING, APPROVAL, DONE, FAILED = "running", "approval", "done", "failed"
STATES = (RUNNING, APPROVAL, DONE, FAILED)
MODEL_REQUEST, TOOL_CALL, OUTPUT_CALL, DEFER, ANSWER, OUTPUT, FAIL = (
    "model_request", "tool_call", "output_call", "defer", "answer", "output", "fail"
)  # fmt: skip
DECISION = "decision"
"""An in-run answer to deferred calls (`HandleDeferredToolCalls`), committed as it was given."""
SLEEP = "sleep"
"""A wait pydantic-ai makes in the run (`durable_sleep`), committed with its wake-up time."""
DURABLE_KIND: Literal["pydantic_ai.Agent"] = "pydantic_ai.Agent"
"""`memory["kind"]` of every DurableAgent run: how a CLI tells them from state-table runs."""

REQUESTS: TypeAdapter[DeferredToolRequests] = TypeAdapter(DeferredToolRequests)
"""Stores `DeferredToolRequests` as JSON and reads them back."""


class DurableMemory(BaseModel):
    """A DurableAgent run's memory: what `Agent.run` was called with, and how it ended.

    The conversation is not here: each model request commits its messages with its event.
    """

    kind: Literal["pydantic_ai.Agent"] = DURABLE_KIND
    agent: str = ""
    """A digest of the agent's function tools and output type: who may go on with the run."""
    prompt: list[JsonValue] = []
    """The user prompt: one pydantic-ai `ModelRequest` holding a `UserPromptPart` ([] for none)."""
    message_history: list[JsonValue] = []
    answers: list[JsonValue] = []
    """`deferred_tool_results` the first call was given, as `Answer`s."""
    output: JsonValue = None
    """The output as JSON, for reading (`DurableAgent.run` rebuilds the real object)."""
    deferred: JsonValue = None
    """While the run waits: the `DeferredToolRequests` it waits on, as JSON."""


def dump_prompt(prompt: str | Sequence[UserContent] | None) -> list[JsonValue]:
    if prompt is None:
        return []
    message = ModelRequest(parts=[UserPromptPart(prompt, timestamp=_EPOCH)])
    dumped: list[JsonValue] = ModelMessagesTypeAdapter.dump_python([message], mode="json")
    return dumped


def load_prompt(stored: list[JsonValue]) -> str | Sequence[UserContent] | None:
    if not stored:
        return None
    message = ModelMessagesTypeAdapter.validate_python(stored)[0]
    assert isinstance(message, ModelRequest) and isinstance(message.parts[0], UserPromptPart)
    return message.parts[0].content


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
"""The stored prompt's timestamp: the prompt is compared, its time is not."""


class Answer(BaseModel):
    """One answer to a deferred call, committed as an `answer` event (or given up front)."""

    segment: int
    """Which `DeferredToolRequests` of the run it answers (0 for the first)."""
    tool_call_id: str
    kind: Literal["approval", "call"]
    approved: bool = True
    override_args: dict[str, JsonValue] | None = None
    message: str | None = None
    """For a denial: what the model is told."""
    digest: str | None = None
    """For an approval: sha256 of the exact arguments it approves (`args_digest`)."""
    outcome: dict[str, JsonValue] | None = None
    """For an external call: its result, as a tool call's committed outcome."""

    def value(self) -> Any:
        """The answer as pydantic-ai's `DeferredToolResults` takes it."""
        if self.kind == "call":
            return tool_answer(self.outcome or {"result": None})
        if not self.approved:
            return ToolDenied(self.message) if self.message is not None else ToolDenied()
        return ToolApproved(override_args=self.override_args)


def deferred_results(answers: Sequence[Answer]) -> DeferredToolResults:
    results = DeferredToolResults()
    for a in answers:
        (results.approvals if a.kind == "approval" else results.calls)[a.tool_call_id] = a.value()
    return results


@dataclass
class Round:
    """One `DeferredToolRequests` the run parked on, and the answers committed since."""

    requests: DeferredToolRequests
    answers: dict[str, Answer] = field(default_factory=dict)

    @property
    def pending(self) -> list[str]:
        ids = [c.tool_call_id for c in [*self.requests.approvals, *self.requests.calls]]
        return [i for i in ids if i not in self.answers]


def rounds_of(events: Sequence[Event]) -> list[Round]:
    rounds: list[Round] = []
    for e in events:
        if e.kind == "error":
            continue
        if e.trigger == DEFER and isinstance(e.output, dict):
            rounds.append(Round(requests=REQUESTS.validate_python(e.output.get("requests"))))
        elif (
            e.trigger == ANSWER and rounds and isinstance(e.output, dict)
            and not e.output.get("duplicate")
            and not e.output.get("refused")
        ):  # fmt: skip
            a = Answer.model_validate(e.output)
            rounds[-1].answers.setdefault(a.tool_call_id, a)
    return rounds


@dataclass
class Pending:
    kind: str
    op: Callable[[StepContext], Awaitable[StepResult[DurableMemory]]]
    run: Run[DurableMemory]
    seq: int
    error: BaseException | None = None


PENDING: contextvars.ContextVar[Pending | None] = contextvars.ContextVar(
    "agentfsm_durable_pending", default=None
)


class RunMoved(Exception):
    """The run moved on in another process since this one read its history: replay again."""


class CallbackFailed(Exception):
    """The caller's `on_event` raised `error`: it reaches the caller, and the run stays as
    it is (the transition is committed; the run goes on when run again)."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


def _wants(kind: str) -> Callable[[DurableMemory], bool]:
    def guard(memory: DurableMemory) -> bool:
        pending = PENDING.get()
        if pending is None or pending.kind != kind:
            return False
        if pending.run.seq != pending.seq:
            raise RunMoved(pending.run.run_id)
        return True

    guard.__name__ = f"asks_{kind}"
    return guard


@dataclass(frozen=True, kw_only=True, slots=True)
class OperationStep:
    """Runs the operation pydantic-ai asked for (`PENDING`) as this transition's step."""

    kind: str
    label: str
    policy: RetryPolicy

    @property
    def writes(self) -> tuple[str, ...]:
        return ()

    async def run(self, memory: DurableMemory, ctx: StepContext) -> StepResult[DurableMemory]:
        pending = PENDING.get()
        if pending is None:
            raise RunError(
                f"run {ctx.run_id!r} is a DurableAgent run: drive it with DurableAgent.run, not"
                " with the state-table runner"
            )
        try:
            return await pending.op(ctx)
        except Exception as exc:
            pending.error = exc
            raise


@dataclass(frozen=True, kw_only=True, slots=True)
class AnswerStep:
    """Commits one answer to a deferred call of the parked run; routes "more" or "done"."""

    policy: RetryPolicy = field(default_factory=RetryPolicy)
    kind: str = "wait"

    @property
    def label(self) -> str:
        return "approve / answer"

    @property
    def writes(self) -> tuple[str, ...]:
        return ("deferred",)

    def check_payload(self, payload: Any) -> JsonValue:
        checked: JsonValue = Answer.model_validate(payload).model_dump(mode="json")
        return checked

    async def run(self, memory: DurableMemory, ctx: StepContext) -> StepResult[DurableMemory]:
        answer = Answer.model_validate(ctx.payload)
        rounds = rounds_of(await ctx.history())
        current = rounds[-1] if rounds else None
        out: dict[str, JsonValue] = answer.model_dump(mode="json")
        if current is None or answer.tool_call_id not in current.pending:
            out["duplicate"] = True  # answered meanwhile (two approvers): the first one counts
            left = current.pending if current else []
        elif (why := _wrong(answer, current.requests)) is not None:
            out["refused"] = why  # committed, so it can be seen; it answers nothing
            left = current.pending
        else:
            left = [i for i in current.pending if i != answer.tool_call_id]
        new = memory if left else memory.model_copy(update={"deferred": None})
        return StepResult(memory=new, output=out, route="more" if left else "done")


def _wrong(answer: Answer, requests: DeferredToolRequests) -> str | None:
    """Why `answer` cannot answer its call, or None: an approval must name the call as an
    approval and carry the digest of exactly the arguments it approves."""
    calls = requests.approvals if answer.kind == "approval" else requests.calls
    call = next((c for c in calls if c.tool_call_id == answer.tool_call_id), None)
    if call is None:
        return f"call {answer.tool_call_id!r} is not waiting for an answer of kind {answer.kind!r}"
    if answer.kind == "approval" and answer.approved:
        approved = answer.override_args if answer.override_args is not None else call.args_as_dict()
        if answer.digest != args_digest(approved):
            return "the digest does not match the arguments approved"
    return None


def durable_transitions(model: RetryPolicy, tool: RetryPolicy) -> list[Transition]:
    """The machine's table; the same for every DurableAgent (only the name differs)."""
    once = RetryPolicy(retry_on=())
    return [
        transition(
            MODEL_REQUEST, RUNNING, RUNNING,
            OperationStep(kind="llm", label="model request", policy=model),
            guard=_wants(MODEL_REQUEST),
        ),
        transition(
            TOOL_CALL, RUNNING, RUNNING,
            OperationStep(kind="tool", label="tool call", policy=tool),
            guard=_wants(TOOL_CALL),
        ),
        transition(
            OUTPUT_CALL, RUNNING, RUNNING,
            OperationStep(kind="tool", label="output function", policy=tool),
            guard=_wants(OUTPUT_CALL),
        ),
        transition(
            DECISION, RUNNING, RUNNING,
            OperationStep(kind="decision", label="deferred calls handled in the run", policy=once),
            guard=_wants(DECISION),
        ),
        transition(
            SLEEP, RUNNING, RUNNING,
            OperationStep(kind="sleep", label="durable sleep", policy=once),
            guard=_wants(SLEEP),
        ),
        transition(
            DEFER, RUNNING, APPROVAL,
            OperationStep(kind="defer", label="deferred tool requests", policy=once),
            guard=_wants(DEFER),
        ),
        transition(
            OUTPUT, RUNNING, DONE,
            OperationStep(kind="output", label="output", policy=once),
            guard=_wants(OUTPUT),
        ),
        transition(
            FAIL, RUNNING, FAILED,
            OperationStep(kind="fail", label="pydantic-ai error", policy=once),
            guard=_wants(FAIL),
        ),
        transition(ANSWER, APPROVAL, None, AnswerStep(),
                   routes={"more": APPROVAL, "done": RUNNING}),
    ]  # fmt: skip


class DurableRunFailed(RunError):
    """The run failed in an earlier process: a step gave up (its error is in `error`)."""

    def __init__(self, run_id: str, error: Mapping[str, Any] | None) -> None:
        self.run_id = run_id
        self.error = dict(error or {})
        what = f"{self.error.get('type', 'Error')}: {self.error.get('message', '')}"
        super().__init__(f"run {run_id!r} failed: {what}")


def durable_machine(
    name: str,
    version: int = 1,
    *,
    model_policy: StepPolicy = MODEL_POLICY,
    tool_policy: StepPolicy = TOOL_POLICY,
    lease_ttl: float = 15.0,
) -> Agent[DurableMemory]:
    """The machine of a DurableAgent named `name` (the same table for every one)."""
    return Agent(
        name=name,
        memory=DurableMemory,
        version=version,
        initial=RUNNING,
        final=[DONE],
        on_error=FAILED,
        lease_ttl=lease_ttl,
        states=list(STATES),
        transitions=durable_transitions(
            model_policy.retry_policy(model=True), tool_policy.retry_policy(model=False)
        ),
    )
