"""The `Agent.run` calls one durable run is made of, and what ends each.

A durable run is one `Agent.run` (or `iter`, `run_stream`) of the pydantic-ai agent, or, when it
deferred calls that were answered later, several: each answered `DeferredToolRequests` ends one
segment, and the next goes on with the messages so far and the answers (`deferred_tool_results`),
as a plain pydantic-ai caller would. Every segment but the last is replayed from the history
(nothing is sent or run); the last goes live where the history ends.

`replaying` is what every segment runs inside (one call at a time, pydantic-ai's replay scope, the
agent's deferred-call handlers journaled, its waits durable: `_sleep.py`); `failing` turns an
error pydantic-ai gave up with into the run's `fail` commit; `settle` commits how a segment ended
(`output` or `defer`) and says what the next one starts with.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic_ai import Agent as PydanticAgent
from pydantic_ai import DeferredToolRequests
from pydantic_ai.capabilities import AbstractCapability
from pydantic_ai.durable_exec import replay_scope
from pydantic_ai.messages import ModelMessage, ModelMessagesTypeAdapter, UserContent
from pydantic_ai.tool_manager import ToolManager

from statemachine import RunError, RunLocked
from statemachine.errors import RunTakenOver
from storage import StorageError

from ._journal import Journal, JournaledHandler, answers_in_run
from ._sleep import Sleeps
from ._steps import Answer, CallbackFailed, RunMoved, deferred_results, load_prompt
from ._tracing import traced_steps

__all__ = [
    "JOURNALS_HANDLERS",
    "Segment",
    "failing",
    "first_segment",
    "replay_to_live",
    "replaying",
    "settle",
]

JOURNALS_HANDLERS = "capabilities" in inspect.signature(PydanticAgent.override).parameters
"""Whether the installed pydantic-ai can swap an agent's capabilities for a run (2.78 and later),
which journaling its deferred-call handlers needs; with an older one they are asked again on
replay, as pydantic-ai's own durable engines do (upgrade pydantic-ai-slim to journal them)."""

OURS = (RunMoved, RunError, RunLocked, RunTakenOver, StorageError)
"""Errors of durability itself: they leave the run as it is (it goes on when run again)."""


@dataclass
class Segment:
    """What one `Agent.run` of the durable run starts with."""

    prompt: str | Sequence[UserContent] | None
    history: list[ModelMessage] | None
    answers: list[Answer]

    def arguments(self, journal: Journal) -> dict[str, Any]:
        """`Agent.run`'s arguments for this segment (the caller's own come beside them)."""
        run = journal.run
        return dict(
            user_prompt=self.prompt,
            message_history=self.history,
            deferred_tool_results=deferred_results(self.answers) if self.answers else None,
            run_id=run.run_id if journal.segment == 0 else f"{run.run_id}/{journal.segment}",
            conversation_id=run.run_id,
            capabilities=[journal, *traced_steps(run)],
        )


def first_segment(journal: Journal) -> Segment:
    memory = journal.run.memory
    history = (
        ModelMessagesTypeAdapter.validate_python(memory.message_history)
        if memory.message_history
        else None
    )
    return Segment(
        prompt=load_prompt(memory.prompt),
        history=history,
        answers=[Answer.model_validate(a) for a in memory.answers],
    )


def live_segment(journal: Journal) -> int:
    """The segment that goes on where the history ends: the first whose deferred calls are
    not all answered yet (or the one after the last round)."""
    return next((i for i, r in enumerate(journal.rounds) if r.pending), len(journal.rounds))


@contextlib.contextmanager
def replaying(agent: PydanticAgent[Any, Any], journal: Journal, segment: Segment) -> Iterator[None]:
    """What every segment runs inside: tool calls one after another (their commits are in
    order), pydantic-ai's replay scope (replayed work reports no spans again), the agent's
    deferred-call handlers answering through the journal, and its waits journaled."""
    journal.answers_in = {a.tool_call_id: a for a in segment.answers}
    mine = list(agent.root_capability.capabilities)
    handlers = (
        agent.override(capabilities=_journaled(mine, journal))
        if JOURNALS_HANDLERS and any(answers_in_run(c) for c in mine)
        else contextlib.nullcontext()
    )
    with (
        ToolManager.parallel_execution_mode("sequential"),
        replay_scope(),
        PydanticAgent.using_sleep(Sleeps(journal)),
        handlers,
    ):
        yield


def _journaled(capabilities: Sequence[AbstractCapability[Any]], journal: Journal) -> list[Any]:
    return [
        JournaledHandler(wrapped=c, journal=journal, index=i) if answers_in_run(c) else c
        for i, c in enumerate(capabilities)
    ]


@contextlib.asynccontextmanager
async def failing(journal: Journal) -> AsyncIterator[None]:
    """An error pydantic-ai gave up with ends the run the same way (`fail` is committed);
    errors of durability itself leave it as it is; an `on_event` callback's error reaches
    the caller as it was raised."""
    try:
        yield
    except OURS:
        raise
    except CallbackFailed as failed:
        raise failed.error from None
    except Exception as exc:
        if journal.run.status == "running":
            await journal.fail(exc)
        raise


async def settle(journal: Journal, output: Any, messages: list[ModelMessage]) -> Segment | None:
    """Commit how a segment ended; the next segment, or None when the run is where it stops
    (done, or waiting for answers)."""
    run = journal.run
    if not isinstance(output, DeferredToolRequests):
        if run.status == "running":
            await journal.finish(output)
        return None
    if journal.segment >= len(journal.rounds):
        await journal.defer(output)
        return None
    parked = journal.rounds[journal.segment]
    ids = sorted(c.tool_call_id for c in [*output.approvals, *output.calls])
    stored = sorted(c.tool_call_id for c in [*parked.requests.approvals, *parked.requests.calls])
    if ids != stored:
        raise RunError(
            f"run {run.run_id!r}: the replay deferred the calls {ids}, the history"
            f" {stored}: the agent no longer does what it did when the run started"
        )
    if parked.pending:
        return None  # still waiting for answers
    journal.segment += 1
    return Segment(prompt=None, history=messages, answers=[parked.answers[i] for i in ids])


async def replay_to_live(
    agent: PydanticAgent[Any, Any], journal: Journal, options: dict[str, Any]
) -> Segment:
    """Replay the segments before the live one (`Agent.run`, answered from the history) and
    return what the live one starts with."""
    segment = first_segment(journal)
    options = {k: v for k, v in options.items() if k != "event_stream_handler"}
    while journal.segment < live_segment(journal):
        async with failing(journal):
            with replaying(agent, journal, segment):
                result = await agent.run(**segment.arguments(journal), **options)
        following = await settle(journal, result.output, result.all_messages())
        if following is None:  # pragma: no cover  (the history says more segments follow)
            raise RunError(f"run {journal.run.run_id!r}: its history ends differently on replay")
        segment = following
    return segment
