"""The tool-call bookkeeping that `llm(..., tools=...)` loops and `DurableAgent` share.

A tool call is committed as one event whose output names the call and its outcome:

    {"tool_call_id": ..., "tool": ..., "args": ..., "result": ...}      the tool returned
    {"tool_call_id": ..., "tool": ..., "args": ..., "retry": "..."}     it raised ModelRetry
    {"tool_call_id": ..., "tool": ..., "args": ..., "failed": "..."}    it raised ToolFailed
    {"tool_call_id": ..., "tool": ..., "args": ..., "deferred": {...}}  it deferred the call

`result` is the value in the shape pydantic-ai's own durable-execution codec gives it, built
with pydantic-ai's public types only (`ToolReturn`, `messages.tool_return_content_ta`), so a
`ToolReturn` (with its metadata and extra content), a `BinaryContent` or a `DocumentUrl` comes
back as the same object (`replay_outcome`), and a plain JSON value as itself. One function
derives a call's idempotency key from its transition's (`call_key`), one charges what a model
request cost to the transition (`charge`), and `StepPolicy` is the retry policy of both kinds.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import pydantic_core
from pydantic import BaseModel, JsonValue, TypeAdapter
from pydantic_ai import ModelRetry, ToolReturn
from pydantic_ai.exceptions import (
    ApprovalRequired,
    CallDeferred,
    ModelConnectionError,
    ModelHTTPError,
    ModelRateLimitError,
    ModelRequestTimeout,
    ModelServerError,
    ModelUnavailableError,
    ToolFailed,
)
from pydantic_ai.messages import tool_return_content_ta
from pydantic_ai.usage import RunUsage

from statemachine import StepContext
from statemachine.engine import RetryPolicy, StepResult

__all__ = [
    "MODEL_POLICY",
    "TOOL_POLICY",
    "TRANSIENT_MODEL_ERRORS",
    "StepPolicy",
    "args_digest",
    "call_key",
    "call_tool",
    "charge",
    "record_outcome",
    "replay_outcome",
    "tool_answer",
    "transient_http_error",
]

MemoryT = TypeVar("MemoryT", bound=BaseModel)

USAGE_FIELDS = ("requests", "input_tokens", "output_tokens")
EXTRA_USAGE_FIELDS = ("cache_read_tokens", "cache_write_tokens")
"""Recorded only when not zero (so steps that use no cache record what they always did)."""

TRANSIENT_MODEL_ERRORS: tuple[type[BaseException], ...] = (
    ModelServerError,
    ModelRateLimitError,
    ModelConnectionError,
    ModelUnavailableError,
    ModelRequestTimeout,
    TimeoutError,
)
"""Provider errors worth another try; a rejected request (bad key, unknown model) is not."""

TRANSIENT_HTTP_STATUSES = frozenset({408, 409, 425, 429})
"""4xx statuses that mean "try again" (timeout, conflict, too early, too many requests);
pydantic-ai files some of them under no category, as a plain `ModelHTTPError`."""


def transient_http_error(error: BaseException) -> bool:
    return isinstance(error, ModelHTTPError) and (
        error.status_code in TRANSIENT_HTTP_STATUSES or error.status_code >= 500
    )


@dataclass(frozen=True, kw_only=True, slots=True)
class StepPolicy:
    """How one kind of transition (model requests, or tool calls) is retried.

    `retries` extra tries after a failed one, waiting `backoff` seconds before the second
    (doubling, with jitter, up to `max_backoff`); `timeout` seconds one try may take. Model
    requests are retried only on errors that may pass (5xx, 408/409/425/429, rate limits,
    timeouts, dropped connections); tool calls only when they ran over their `timeout`: any
    other exception a tool raises ends the run with that exception, as in `Agent.run`
    (`ModelRetry` and `ToolFailed` are answers to the model). A try cut short by its process
    dying counts against `crash_retries` instead (None: the machine's default). A sync tool
    that runs over its timeout is abandoned in its worker thread, not stopped.
    """

    retries: int = 0
    backoff: float = 0.5
    timeout: float | None = None
    max_backoff: float = 30.0
    crash_retries: int | None = None

    def __post_init__(self) -> None:
        if self.retries < 0:
            raise ValueError(f"retries must be 0 or more, not {self.retries}")
        if self.timeout is not None and self.timeout <= 0:
            raise ValueError(f"timeout must be positive, not {self.timeout}")
        if self.crash_retries is not None and self.crash_retries < 0:
            raise ValueError(f"crash_retries must be 0 or more, not {self.crash_retries}")

    def retry_policy(self, *, model: bool) -> RetryPolicy:
        return RetryPolicy(
            attempts=self.retries + 1,
            backoff=self.backoff,
            max_backoff=self.max_backoff,
            timeout=self.timeout,
            retry_on=TRANSIENT_MODEL_ERRORS if model else (),
            retry_if=transient_http_error if model else _ran_over(self.timeout),
            crash_retries=self.crash_retries,
        )


def _ran_over(timeout: float | None) -> Callable[[BaseException], bool] | None:
    """A tool try the runner cut short at `timeout` (its TimeoutError) may be tried again."""
    if timeout is None:
        return None
    return lambda error: isinstance(error, TimeoutError)


MODEL_POLICY = StepPolicy(retries=3, backoff=1.0)
"""The default for model requests: three more tries after a provider error that may pass."""
TOOL_POLICY = StepPolicy()
"""The default for tool calls: as in `Agent.run`, an exception is not retried (a call a crash
cut short runs again, up to the machine's `crash_retries`)."""


def call_key(ctx: StepContext, tool_call_id: str) -> str:
    """The idempotency key of one tool call: its transition's key plus the call's id."""
    return f"{ctx.idempotency_key}:{tool_call_id}"


async def call_tool(
    ctx: StepContext,
    memory: MemoryT,
    *,
    tool: str,
    call_id: str,
    args: JsonValue,
    call: Callable[[str], Awaitable[Any]],
    where: Mapping[str, JsonValue] | None = None,
    route: str | None = None,
) -> StepResult[MemoryT]:
    """One tool call as its transition's step: the one tool-call path of `tool_calls()`
    transitions and of DurableAgent. `call(key)` makes the call under its idempotency key
    (`call_key`); the live channel sees it start and finish; its outcome is recorded
    (`record_outcome`) beside the call's id, tool and arguments (and `where`, read once the
    call is over: what the caller needs to find it again, and what the call left behind), and
    counted as one tool call."""
    ctx.live.emit("tool_started", tool=tool, call_id=call_id)
    outcome = await record_outcome(call(call_key(ctx, call_id)))
    ctx.live.emit("tool_finished", tool=tool, call_id=call_id, ok="result" in outcome)
    output: dict[str, JsonValue] = {
        **(where or {}), "tool_call_id": call_id, "tool": tool, "args": args, **outcome
    }  # fmt: skip
    return StepResult(
        memory=memory, output=output, route=route, usage={"tool_calls": 1}, subkey=call_id
    )


def charge(ctx: StepContext, usage: RunUsage) -> dict[str, int]:
    """Add what model requests cost to the transition's tally (`ctx.spent`), also when the
    request failed, so the event records every try; returns the tally. Cache tokens and the
    cost (in nano-USD, `cost_nusd`: pydantic-ai prices requests with `genai-prices` where it
    knows the model) are added when not zero."""
    for name in USAGE_FIELDS:
        ctx.spent[name] = ctx.spent.get(name, 0) + getattr(usage, name)
    extra = {name: getattr(usage, name) for name in EXTRA_USAGE_FIELDS}
    if usage.cost is not None:
        extra["cost_nusd"] = round(usage.cost * 10**9)
    for name, value in extra.items():
        if value:
            ctx.spent[name] = ctx.spent.get(name, 0) + int(value)
    return dict(ctx.spent)


_TOOL_RETURN: TypeAdapter[ToolReturn[Any]] = TypeAdapter(ToolReturn)
_TOOL_RETURN_KIND = "tool-return"
"""`ToolReturn`'s own `kind`: a stored result of that kind is a `ToolReturn` unless marked
`content_result` (a plain dict of the tool's that happens to carry that kind)."""


def _is_tool_return_dict(value: Any) -> bool:
    return isinstance(value, dict) and value.get("kind") == _TOOL_RETURN_KIND


async def record_outcome(call: Awaitable[Any]) -> dict[str, JsonValue]:
    """Await a tool call and describe how it ended, as JSON (see the module docstring).

    Any exception other than pydantic-ai's answers to the model propagates.
    """
    try:
        value = await call
    except ApprovalRequired as exc:
        return {"deferred": {"kind": "approval_required", "metadata": _json(exc.metadata)}}
    except CallDeferred as exc:
        deferred: dict[str, JsonValue] = {"kind": "call_deferred", "metadata": _json(exc.metadata)}
        if exc.kind != "external":
            deferred["call_kind"] = exc.kind
        return {"deferred": deferred}
    except ModelRetry as exc:
        return {"retry": exc.message}
    except ToolFailed as exc:
        return {"failed": exc.message}
    if isinstance(value, ToolReturn):
        dumped: JsonValue = _TOOL_RETURN.dump_python(value, mode="json")
        return {"result": dumped}
    content: JsonValue = tool_return_content_ta.dump_python(value, mode="json")
    if _is_tool_return_dict(value):
        return {"result": content, "content_result": True}
    return {"result": content}


def _json(value: Any) -> JsonValue:
    dumped: JsonValue = pydantic_core.to_jsonable_python(value)
    return dumped


def replay_outcome(outcome: Mapping[str, JsonValue]) -> Any:
    """What the tool call did, again: return its value or raise what it raised."""
    if "retry" in outcome:
        raise ModelRetry(str(outcome["retry"]))
    if "failed" in outcome:
        raise ToolFailed(str(outcome["failed"]))
    deferred = outcome.get("deferred")
    if isinstance(deferred, dict):
        metadata = deferred.get("metadata")
        meta = dict(metadata) if isinstance(metadata, dict) else None
        if deferred.get("kind") == "approval_required":
            raise ApprovalRequired(metadata=meta)
        question = deferred.get("call_kind") == "question"
        raise CallDeferred(metadata=meta, kind="question" if question else "external")
    result = outcome.get("result")
    if _is_tool_return_dict(result) and not outcome.get("content_result"):
        return _TOOL_RETURN.validate_python(result)
    return tool_return_content_ta.validate_python(result)


def tool_answer(outcome: Mapping[str, JsonValue]) -> Any:
    """A committed outcome as the value pydantic-ai's `deferred_tool_results` expects: a
    retry prompt, a failed call, or the tool's return value."""
    try:
        return replay_outcome(outcome)
    except (ModelRetry, ToolFailed) as answer:
        return answer
    except (ApprovalRequired, CallDeferred):
        raise ValueError(f"a deferred tool call has no answer yet: {outcome!r}") from None


def args_digest(args: JsonValue) -> str:
    """sha256 of a call's arguments as canonical JSON (an approval names what it approves)."""
    if isinstance(args, str):
        with contextlib.suppress(ValueError):  # not JSON: the text as sent is what is approved
            args = pydantic_core.from_json(args or "{}")
    canonical = pydantic_core.to_json(_sorted(args))
    return hashlib.sha256(canonical).hexdigest()


def _sorted(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _sorted(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [_sorted(v) for v in value]
    return pydantic_core.to_jsonable_python(value)
