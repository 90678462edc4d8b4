"""Answers to the calls a DurableAgent run deferred: `approve_tool_call` from any process,
and `deferred_tool_results` turned into committed `Answer`s."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import JsonValue
from pydantic_ai import DeferredToolRequests, DeferredToolResults, ModelRetry, ToolDenied
from pydantic_ai.messages import ToolCallPart
from pydantic_ai.tools import ToolApproved

from statemachine import Machine, RunError, RunNotFound
from storage import Event, RunRecord, Store

from ..steps._tool_engine import args_digest, record_outcome
from ._steps import APPROVAL, DURABLE_KIND, Answer, durable_machine, rounds_of

__all__ = ["answers_to", "approval", "waiting_call", "waiting_calls"]


async def answers_to(
    requests: DeferredToolRequests, results: DeferredToolResults, segment: int
) -> list[Answer]:
    """`deferred_tool_results` as `Answer`s to `requests` (approvals carry the args digest)."""
    approvals = {c.tool_call_id: c for c in requests.approvals}
    calls = {c.tool_call_id: c for c in requests.calls}
    out: list[Answer] = []
    for call_id, value in results.approvals.items():
        call = approvals.get(call_id)
        if call is None:
            raise RunError(
                f"no call {call_id!r} is waiting for approval (waiting: {sorted(approvals)})"
            )
        out.append(_approval(segment, call.tool_call_id, call.args_as_dict(), value))
    for call_id, result in results.calls.items():
        if call_id not in calls:
            raise RunError(f"no external call {call_id!r} is waiting (waiting: {sorted(calls)})")

        async def give(value: Any = result) -> Any:
            if isinstance(value, ModelRetry | ToolDenied):
                raise value if isinstance(value, ModelRetry) else ModelRetry(value.message)
            return value

        outcome = await record_outcome(give())
        out.append(Answer(segment=segment, tool_call_id=call_id, kind="call", outcome=outcome))
    return out


def _approval(segment: int, call_id: str, args: dict[str, Any], value: Any) -> Answer:
    if value is False or isinstance(value, ToolDenied):
        message = value.message if isinstance(value, ToolDenied) else None
        return Answer(segment=segment, tool_call_id=call_id, kind="approval", approved=False,
                      message=message)  # fmt: skip
    override = value.override_args if isinstance(value, ToolApproved) else None
    approved_args = dict(override) if override is not None else args
    return Answer(segment=segment, tool_call_id=call_id, kind="approval",
                  override_args=override, digest=args_digest(approved_args))  # fmt: skip


async def approval(
    store: Store,
    run_id: str,
    tool_call_id: str,
    *,
    args: Mapping[str, Any] | None = None,
    deny: str | None = None,
) -> tuple[Machine[Any], JsonValue]:
    """The machine of DurableAgent run `run_id` and the answer payload that approves (or,
    with `deny`, denies) its deferred call `tool_call_id`; `RunError` naming why there is
    none (see `approve_tool_call`). Writes nothing."""
    record = await store.load(run_id)
    if record is None:
        raise RunNotFound(run_id)
    events = await store.history(run_id) if record.memory.get("kind") == DURABLE_KIND else []
    call = waiting_call(record, events, tool_call_id)
    machine = durable_machine(record.agent, record.version)
    value: Any = (
        ToolDenied(deny)
        if deny is not None
        else ToolApproved(override_args=dict(args) if args is not None else None)
    )
    answer = _approval(len(rounds_of(events)) - 1, tool_call_id, call.args_as_dict(), value)
    payload: JsonValue = answer.model_dump(mode="json")
    return machine, payload


def waiting_calls(record: RunRecord, events: Sequence[Event]) -> list[ToolCallPart]:
    """The calls DurableAgent run `record` (with its committed `events`) waits to have
    approved; `RunError` naming why none can be answered (not a DurableAgent run, or not
    waiting for approvals). The one rule the engine's "approve"/"deny" and the UI's forms
    follow."""
    run_id = record.run_id
    if record.memory.get("kind") != DURABLE_KIND:
        raise RunError(f"run {run_id!r} is not a DurableAgent run (agent {record.agent!r})")
    rounds = rounds_of(events)
    current = rounds[-1] if rounds and record.state == APPROVAL else None
    if current is None:
        raise RunError(
            f"run {run_id!r} is {record.status} in state {record.state!r}: nothing to approve"
        )
    return [c for c in current.requests.approvals if c.tool_call_id in current.pending]


def waiting_call(record: RunRecord, events: Sequence[Event], tool_call_id: str) -> ToolCallPart:
    """The call `tool_call_id` that run `record` waits to have approved (`waiting_calls`);
    `RunError` naming those that wait when it is not one of them."""
    waiting = waiting_calls(record, events)
    call = next((c for c in waiting if c.tool_call_id == tool_call_id), None)
    if call is None:
        names = ", ".join(f"{c.tool_call_id} ({c.tool_name})" for c in waiting) or "none"
        raise RunError(
            f"run {record.run_id!r} has no call {tool_call_id!r} waiting for approval;"
            f" waiting: {names}"
        )
    return call
