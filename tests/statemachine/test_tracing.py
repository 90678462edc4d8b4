"""Tracing in one process, on every store: the run's trace made at `start` and stored, one
span per transition parented to it whichever `Run` object drives it (`resume`, `send`,
`retry`, `cancel`, a timeout), errors and retries as span events, forks as new traces linked
to their source, and no SDK: no spans, no errors, a trace context stored all the same."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pydantic import BaseModel

from agents import Agent, tool, wait
from statemachine.errors import RunTakenOver
from storage import LeaseLost, Store

from ..tracing import global_provider, span_dict


class Ticket(BaseModel):
    tries: int = 0
    answer: str = ""
    closed: bool = False


def flaky(memory: Ticket) -> int:
    """Fails on the first two tries of each visit (the memory of a try is not kept)."""
    flaky.calls += 1  # type: ignore[attr-defined]
    if flaky.calls % 3:  # type: ignore[attr-defined]
        raise ConnectionError(f"try {flaky.calls} fails")  # type: ignore[attr-defined]
    return 1


flaky.calls = 0  # type: ignore[attr-defined]


def broken(memory: Ticket) -> bool:
    raise ValueError("the ticket system is down")


ticket = Agent(
    name="ticket", memory=Ticket, initial="new", final=["closed"],
    transitions=[
        tool("open", "new", "asked", flaky, into="tries", retries=3, backoff=0),
        wait("reply", "asked", "answered", payload=str, into="answer"),
        tool("close", "answered", "closed", broken, into="closed", on_error="stuck"),
        tool("unstick", "stuck", "closed", lambda m: True, into="closed"),
    ],
)  # fmt: skip


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    with global_provider() as exporter:
        yield exporter


def finished(exporter: InMemorySpanExporter) -> list[dict[str, Any]]:
    got: tuple[ReadableSpan, ...] = exporter.get_finished_spans()
    return [span_dict(s) for s in got]


async def test_every_transition_of_a_run_is_a_span_of_its_one_trace(
    store: Store, spans: InMemorySpanExporter
) -> None:
    flaky.calls = 0  # type: ignore[attr-defined]
    run = await ticket.start(store, Ticket(), run_id="tr-1")
    await run.until_done()  # open (two failed tries), then waits for the reply
    again = await ticket.resume(store, "tr-1")  # another Run object: it reads the trace back
    await again.send("reply", "fixed")
    await again.until_done()  # close fails for good: its detour is "stuck"
    assert again.state == "closed"

    stored = await store.load("tr-1")
    assert stored is not None
    _, trace_id, root_id, flags = stored.trace.split("-")
    got = finished(spans)
    assert [s["name"] for s in got] == [
        "run ticket",
        "tool open",
        "wait reply",
        "tool close",
        "tool unstick",
    ]
    root, opened, replied, closed, unstuck = got
    assert {s["trace_id"] for s in got} == {trace_id}
    assert (root["span_id"], root["parent_id"], int(flags, 16) & 1) == (root_id, None, 1)
    assert all(s["parent_id"] == root_id for s in got[1:])
    assert root["attributes"] == {
        "gen_ai.agent.name": "ticket", "gen_ai.agent.version": "1",
        "gen_ai.conversation.id": "tr-1", "agentfsm.run.id": "tr-1", "agentfsm.state": "new",
    }  # fmt: skip

    history = await store.history("tr-1")
    for span, event in zip(got[1:], history[1:], strict=True):
        a = span["attributes"]
        assert (a["agentfsm.trigger"], a["agentfsm.seq"], a["agentfsm.attempt"]) == (
            event.trigger, event.seq, event.attempt,
        )  # fmt: skip
        assert (a["agentfsm.source"], a["agentfsm.dest"], a["agentfsm.status"]) == (
            event.source, event.dest, event.status,
        )  # fmt: skip
        assert a["agentfsm.idempotency_key"] == event.key
    assert opened["attributes"]["agentfsm.attempt"] == 3
    assert [(e["name"], e["attributes"]["agentfsm.attempt"], e["attributes"]["agentfsm.retry"],
             e["attributes"]["exception.type"]) for e in opened["events"]] == [
        ("exception", 1, True, "ConnectionError"), ("exception", 2, True, "ConnectionError"),
    ]  # fmt: skip
    assert (opened["status"], opened["attributes"]["agentfsm.outcome"]) == ("UNSET", "committed")
    assert replied["attributes"]["agentfsm.kind"] == "wait"
    # close gave up: an error event was committed, the span says so
    assert (closed["status"], closed["attributes"]["agentfsm.outcome"]) == ("ERROR", "failed")
    assert closed["attributes"]["agentfsm.dest"] == "stuck"
    assert [(e["name"], e["attributes"]["agentfsm.retry"]) for e in closed["events"]] == [
        ("exception", False)
    ]
    assert unstuck["attributes"]["agentfsm.outcome"] == "committed"


async def test_retry_and_cancel_are_spans_of_the_run(
    store: Store, spans: InMemorySpanExporter
) -> None:
    plain = Agent(
        name="plain", memory=Ticket, initial="new", final=["closed"],
        transitions=[tool("close", "new", "closed", broken, into="closed")],
    )  # fmt: skip
    run = await plain.start(store, Ticket(), run_id="tr-2")
    await run.until_done()
    assert run.status == "failed"
    resumed = await plain.resume(store, "tr-2")
    await resumed.retry()
    await resumed.cancel("enough")
    got = finished(spans)
    assert [s["name"] for s in got] == ["run plain", "tool close", "control retry",
                                        "control cancel"]  # fmt: skip
    assert len({s["trace_id"] for s in got}) == 1
    assert all(s["parent_id"] == got[0]["span_id"] for s in got[1:])
    assert got[-1]["attributes"]["agentfsm.status"] == "cancelled"


async def test_a_run_started_inside_a_span_is_part_of_its_trace(
    store: Store, spans: InMemorySpanExporter
) -> None:
    tracer = trace.get_tracer("test")
    with tracer.start_as_current_span("request") as request:
        run = await ticket.start(store, Ticket(), run_id="tr-3")
    with tracer.start_as_current_span("another request") as other:
        flaky.calls = 2  # type: ignore[attr-defined]  # the next call works
        await run.until_done()
    got = {s["name"]: s for s in finished(spans)}
    root, opened = got["run ticket"], got["tool open"]
    assert root["trace_id"] == f"{request.get_span_context().trace_id:032x}"
    assert root["parent_id"] == f"{request.get_span_context().span_id:016x}"
    assert opened["parent_id"] == root["span_id"]  # the run's trace, not the caller's
    theirs = other.get_span_context()
    assert opened["links"] == [f"{theirs.trace_id:032x}-{theirs.span_id:016x}"]


async def test_a_fork_is_a_new_trace_linked_to_its_source(
    store: Store, spans: InMemorySpanExporter
) -> None:
    flaky.calls = 2  # type: ignore[attr-defined]
    run = await ticket.start(store, Ticket(), run_id="tr-4")
    await run.until_done()
    fork = await ticket.fork(store, "tr-4", 1, new_run_id="tr-4b")
    await fork.send("reply", "again")
    source = await store.load("tr-4")
    assert source is not None and fork.record.trace != source.trace
    got = {(s["name"], s["attributes"]["agentfsm.run.id"]): s for s in finished(spans)}
    root = got[("run ticket", "tr-4b")]
    _, source_trace, source_root, _ = source.trace.split("-")
    assert root["links"] == [f"{source_trace}-{source_root}"]
    assert root["attributes"]["agentfsm.forked_from"] == "tr-4"
    assert root["trace_id"] != source_trace
    assert got[("wait reply", "tr-4b")]["parent_id"] == root["span_id"]


async def test_a_start_that_finds_the_run_reports_no_second_root(
    store: Store, spans: InMemorySpanExporter
) -> None:
    first = await ticket.start(store, Ticket(), run_id="tr-5")
    again = await ticket.start(store, Ticket(), run_id="tr-5")
    assert again.record.trace == first.record.trace
    assert [s["name"] for s in finished(spans)] == ["run ticket"]


async def test_a_commit_refused_is_a_span_that_says_so(
    store: Store, spans: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    flaky.calls = 2  # type: ignore[attr-defined]
    run = await ticket.start(store, Ticket(), run_id="tr-6")

    async def taken_over(*args: object, **kwargs: object) -> LeaseLost:
        return LeaseLost()  # what the store answers a holder whose lease was taken over

    monkeypatch.setattr(store, "commit", taken_over)
    with pytest.raises(RunTakenOver):
        await run.step()
    refused = finished(spans)[-1]
    assert (refused["name"], refused["status"]) == ("tool open", "ERROR")
    assert refused["attributes"]["agentfsm.outcome"] == "taken_over"
    assert [e["attributes"]["exception.type"] for e in refused["events"]] == [
        "statemachine.errors.RunTakenOver"
    ]


async def test_without_an_sdk_nothing_is_traced_and_a_trace_is_stored(store: Store) -> None:
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
    flaky.calls = 2  # type: ignore[attr-defined]
    run = await ticket.start(store, Ticket(), run_id="tr-7")
    await run.until_done()
    await run.send("reply", "ok")
    await run.until_done()
    version, trace_id, span_id, flags = run.record.trace.split("-")
    assert (version, len(trace_id), len(span_id), flags) == ("00", 32, 16, "01")
    stored = await store.load("tr-7")
    assert stored is not None and stored.trace == run.record.trace


async def test_a_timeout_fired_by_a_poller_is_a_span_of_the_run(
    store: Store, spans: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    timed = Agent(
        name="timed", memory=Ticket, initial="asked", final=["closed"],
        transitions=[
            wait("reply", "asked", "closed", payload=str, into="answer", timeout=60,
                 on_timeout="late"),
            tool("give_up", "late", "closed", lambda m: True, into="closed"),
        ],
    )  # fmt: skip
    run = await timed.start(store, Ticket(), run_id="tr-8")
    ahead = time.time() + 120
    monkeypatch.setattr("statemachine._clock.now", lambda: ahead)
    assert await timed.fire_due(store) == ["tr-8"]  # fires it, then drives it to the end
    got = finished(spans)
    assert [s["name"] for s in got] == ["run timed", "timeout reply", "tool give_up"]
    assert all(s["parent_id"] == got[0]["span_id"] for s in got[1:])
    assert got[1]["attributes"]["agentfsm.kind"] == "timeout"
    assert run.record.trace.split("-")[1] == got[1]["trace_id"]


async def test_a_run_started_untraced_is_one_trace_where_it_is_driven_traced(
    store: Store,
) -> None:
    flaky.calls = 2  # type: ignore[attr-defined]
    await ticket.start(store, Ticket(), run_id="tr-9")  # no SDK here (a CLI's `submit`)
    with global_provider() as exporter:  # a worker with one
        run = await ticket.resume(store, "tr-9")
        await run.until_done()
        await run.send("reply", "ok")
        await run.until_done()
        got = finished(exporter)
    _, trace_id, root_id, _ = run.record.trace.split("-")
    assert [s["name"] for s in got] == ["tool open", "wait reply", "tool close", "tool unstick"]
    assert {(s["trace_id"], s["parent_id"]) for s in got} == {(trace_id, root_id)}
