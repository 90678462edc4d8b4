"""OpenTelemetry: one trace per run, one span per transition, across every process.

`start` (and `fork`) make the run's trace: a root span `run {agent}` whose W3C
`traceparent` is stored with the run (`RunRecord.trace`). Every process that drives the run
later (a resume, a worker, `send`, `retry`) reads it back with the run and parents its
transition spans to it, so a run that crashed twice and finished on a worker is one trace.
A transition span (`{kind} {trigger}`) is current while its step runs, so the spans the
step makes (pydantic-ai's `chat` and `execute_tool` when its instrumentation is on) nest
inside it; it ends once the commit answered. A span already current in the run's trace (a
DurableAgent's `invoke_agent`, say) is kept as the parent; one of another trace (a request
handler's) becomes a link.

Attributes (GenAI semantic-convention names where they exist):

    gen_ai.agent.name         the agent (machine) name
    gen_ai.agent.version      its version, as a string
    gen_ai.conversation.id    the run id (what GenAI tooling groups a conversation by)
    agentfsm.run.id           the run id
    agentfsm.trigger          the transition's trigger
    agentfsm.kind             tool, llm, wait, move (no step); control, timeout for the
                              runner's own commits (retry, cancel, a wait's deadline)
    agentfsm.source           the state it leaves
    agentfsm.seq              the seq its commit writes (the committed seq once known)
    agentfsm.attempt          the try that committed (crashes and errors counted)
    agentfsm.dest             the state the commit entered
    agentfsm.status           the run's status after the commit
    agentfsm.idempotency_key  the committed event's key
    agentfsm.outcome          committed | failed (an error event was committed) |
                              taken_over (another process drives the run) | error
                              (an exception left the transition) | interrupted (cancelled)

Errors and retries are span events: each failed try of a step is an `exception` event
(`record_exception`) with `agentfsm.attempt` and `agentfsm.retry` (whether another try
follows); a step that runs again because holders died running it gets an
`agentfsm.crash_retry` event with `agentfsm.crashes`. A failed step's span has status ERROR.

Cost: OpenTelemetry is imported here only once something else imported it (an SDK, logfire
or pydantic-ai). Until a tracer provider is set, a transition pays a few lookups (under a
microsecond: `bench/tracing.py`); a run created then still gets a trace context (random ids),
so processes that trace later (a worker with an SDK) put its spans in one trace whose root
was never reported.
"""

from __future__ import annotations

import os
import secrets
import sys
from contextvars import ContextVar, Token
from functools import lru_cache
from types import TracebackType
from typing import TYPE_CHECKING, Any

from storage import Event, RunRecord

from .errors import RunTakenOver

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.trace import Span, SpanContext, Tracer

__all__ = ["RunTrace", "attached", "open_trace", "step_failed", "traced", "transition_span"]

_TRACER_NAME = "agentfsm"
_active: ContextVar[_Transition | None] = ContextVar("agentfsm_transition", default=None)
_cached: list[Any] = [None, None]
"""The tracer provider last seen, and our tracer from it (None when it traces nothing)."""
_MISSING = object()


def _tracer() -> Tracer | None:
    """Our tracer when a tracer provider is set; None otherwise (no OpenTelemetry imported,
    or only the API's proxy / no-op provider)."""
    api = sys.modules.get("opentelemetry.trace")
    if api is None:
        return None
    # The API's global, read directly: `get_tracer_provider()` looks in os.environ on every
    # call until a provider is set, which would cost each untraced step a few µs.
    provider = getattr(api, "_TRACER_PROVIDER", _MISSING)
    if provider is None and not _provider_from_environment():
        return None
    if provider is None or provider is _MISSING:
        provider = api.get_tracer_provider()
    if provider is not _cached[0]:
        real = not isinstance(provider, api.ProxyTracerProvider | api.NoOpTracerProvider)
        _cached[:] = [
            provider,
            api.get_tracer(_TRACER_NAME, tracer_provider=provider) if real else None,
        ]
    tracer: Tracer | None = _cached[1]
    return tracer


@lru_cache(maxsize=1)
def _provider_from_environment() -> bool:
    """Whether `OTEL_PYTHON_TRACER_PROVIDER` names a provider (read once per process)."""
    return "OTEL_PYTHON_TRACER_PROVIDER" in os.environ


def traced() -> bool:
    """Whether a tracer provider is set (spans made now are reported)."""
    return _tracer() is not None


@lru_cache(maxsize=1024)
def _remote(traceparent: str) -> tuple[SpanContext, Context] | None:
    """The span context a stored `traceparent` names, and a context with it as the parent;
    None for "" (a run stored before traces) or text that is not a traceparent."""
    from opentelemetry import trace

    parts = traceparent.split("-")
    if len(parts) != 4 or len(parts[1]) != 32 or len(parts[2]) != 16 or len(parts[3]) != 2:
        return None
    try:
        trace_id, span_id, flags = int(parts[1], 16), int(parts[2], 16), int(parts[3], 16)
    except ValueError:
        return None
    sc = trace.SpanContext(trace_id, span_id, is_remote=True, trace_flags=trace.TraceFlags(flags))
    if not sc.is_valid:
        return None
    return sc, trace.set_span_in_context(trace.NonRecordingSpan(sc))


def _traceparent(sc: SpanContext) -> str:
    return f"00-{sc.trace_id:032x}-{sc.span_id:016x}-{int(sc.trace_flags):02x}"


def _run_attributes(agent: str, version: int, run_id: str) -> dict[str, str]:
    return {
        "gen_ai.agent.name": agent,
        "gen_ai.agent.version": str(version),
        "gen_ai.conversation.id": run_id,
        "agentfsm.run.id": run_id,
    }


class RunTrace:
    """A new run's trace: store `traceparent` with the run, then call `created()` once the
    store made the run (its root span is reported only then: a `start` that found the run
    made before reports nothing)."""

    __slots__ = ("_span", "traceparent")

    def __init__(self, traceparent: str, span: Span | None) -> None:
        self.traceparent = traceparent
        self._span = span

    def created(self, made: bool) -> None:
        if made and self._span is not None:
            self._span.end()


def open_trace(
    agent: str, version: int, run_id: str, state: str, *, forked_from: RunRecord | None = None
) -> RunTrace:
    """The trace of a run about to be created: a child of the current span, if any (the run
    is then part of the caller's trace), else a new trace. A fork's links to its source's."""
    tracer = _tracer()
    if tracer is not None:
        attributes: dict[str, str | int] = {
            **_run_attributes(agent, version, run_id), "agentfsm.state": state,
        }  # fmt: skip
        links = None
        if forked_from is not None:
            attributes["agentfsm.forked_from"] = forked_from.run_id
            source = _remote(forked_from.trace)
            if source is not None:
                from opentelemetry.trace import Link

                links = [Link(source[0])]
        span = tracer.start_span(f"run {agent}", attributes=attributes, links=links)
        sc = span.get_span_context()
        if sc.is_valid:
            return RunTrace(_traceparent(sc), span)
    # Not traced here: ids of our own, sampled, so that processes that do trace share them.
    return RunTrace(f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01", None)


class _Untraced:
    """What `transition_span` gives when nothing is traced: does nothing, cheaply."""

    __slots__ = ()

    def __enter__(self) -> _Untraced:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def committed(self, event: Event) -> Event:
        return event


_UNTRACED = _Untraced()


class _Transition:
    """One transition's span, current from `__enter__` to `__exit__`."""

    __slots__ = ("_context", "_outcome", "_pending", "_span", "_tokens")

    def __init__(self, span: Span, context: Context, *, pending: bool) -> None:
        self._span = span
        self._context = context
        self._outcome = ""
        self._pending = pending
        """Opened ahead of its transition: dropped (never ended) unless one joins it."""
        self._tokens: tuple[object, Token[_Transition | None]] | None = None

    def __enter__(self) -> _Transition:
        from opentelemetry import context as otel_context

        self._tokens = (otel_context.attach(self._context), _active.set(self))
        return self

    def committed(self, event: Event) -> Event:
        """Say what the commit wrote: seq, attempt, destination, status, key, outcome."""
        span = self._span
        span.set_attributes({
            "agentfsm.seq": event.seq,
            "agentfsm.attempt": event.attempt,
            "agentfsm.dest": event.dest,
            "agentfsm.status": event.status,
            "agentfsm.idempotency_key": event.key,
        })  # fmt: skip
        if event.kind == "error":
            from opentelemetry.trace import Status, StatusCode

            self._outcome = "failed"
            error = event.error or {}
            span.set_status(
                Status(StatusCode.ERROR, f"{error.get('type')}: {error.get('message')}")
            )
        else:
            self._outcome = "committed"
        return event

    def failed_try(self, error: BaseException, attempt: int, retry: bool) -> None:
        self._span.record_exception(
            error, attributes={"agentfsm.attempt": attempt, "agentfsm.retry": retry}
        )

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        span = self._span
        try:
            if self._pending:
                return  # no transition ran inside (a replayed unit): never reported
            if exc is not None:
                from asyncio import CancelledError

                from opentelemetry.trace import Status, StatusCode

                if isinstance(exc, CancelledError):
                    self._outcome = "interrupted"
                else:
                    self._outcome = "taken_over" if isinstance(exc, RunTakenOver) else "error"
                    span.record_exception(exc)
                    span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
            span.set_attribute("agentfsm.outcome", self._outcome or "error")
            span.end()
        finally:
            from opentelemetry import context as otel_context

            assert self._tokens is not None  # entered
            context_token, active_token = self._tokens
            _active.reset(active_token)
            otel_context.detach(context_token)  # type: ignore[arg-type]


class _Joined:
    """A commit inside a transition's span: annotates that span."""

    __slots__ = ("_outer",)

    def __init__(self, outer: _Transition) -> None:
        self._outer = outer

    def __enter__(self) -> _Joined:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def committed(self, event: Event) -> Event:
        return self._outer.committed(event)


def transition_span(
    record: RunRecord, trigger: str, kind: str, *, pending: bool = False
) -> _Transition | _Joined | _Untraced:
    """The span of one transition of run `record` (use with `with`; `.committed(event)` once
    the commit landed). Inside another transition's span, that one is used. `pending`: a
    span opened ahead of the transition it may hold (so that spans opened in between nest
    inside it), reported only if a transition ran inside it."""
    outer = _active.get()
    if outer is not None:
        outer._pending = False
        return _Joined(outer)
    tracer = _tracer()
    if tracer is None:
        return _UNTRACED
    from opentelemetry import trace

    attributes: dict[str, str | int] = {
        **_run_attributes(record.agent, record.version, record.run_id),
        "agentfsm.trigger": trigger,
        "agentfsm.kind": kind,
        "agentfsm.source": record.state,
        "agentfsm.seq": record.seq + 1,
    }
    parent = _remote(record.trace)
    current = trace.get_current_span().get_span_context()
    links = None
    context = None  # the current context: nest under the current span
    if parent is not None and not (current.is_valid and current.trace_id == parent[0].trace_id):
        context = parent[1]
        if current.is_valid:
            links = [trace.Link(current)]
    span = tracer.start_span(f"{kind} {trigger}", context, attributes=attributes, links=links)
    if record.crashes and kind != "wait":  # a holder of a waiting run was not running a step
        span.add_event("agentfsm.crash_retry", {"agentfsm.crashes": record.crashes})
    return _Transition(span, trace.set_span_in_context(span), pending=pending)


def step_failed(error: BaseException, attempt: int, *, retry: bool) -> None:
    """Record a failed try of the current transition's step (an `exception` span event)."""
    active = _active.get()
    if active is not None:
        active.failed_try(error, attempt, retry)


class attached:
    """Make run `record`'s trace current (for code that makes its own spans around
    transitions, such as pydantic-ai's agent run span in a DurableAgent run)."""

    __slots__ = ("_record", "_token")

    def __init__(self, record: RunRecord) -> None:
        self._record = record
        self._token: object = None

    def __enter__(self) -> None:
        if _tracer() is None:
            return
        parent = _remote(self._record.trace)
        if parent is None:
            return
        from opentelemetry import context as otel_context
        from opentelemetry import trace

        current = trace.get_current_span().get_span_context()
        if not (current.is_valid and current.trace_id == parent[0].trace_id):
            self._token = otel_context.attach(parent[1])

    def __exit__(self, *exc: object) -> None:
        if self._token is not None:
            from opentelemetry import context as otel_context

            otel_context.detach(self._token)  # type: ignore[arg-type]
