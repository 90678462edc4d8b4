"""One trace per run across processes: a run SIGKILLed in its third step, resumed and
SIGKILLed again in its fourth, and finished by a third process (a `Worker` on Redis, a
resume on the embedded store) is one trace: every transition span of the three processes
has the run's trace id and the run's root span (made at `start`) as its parent, with the
documented attributes, the retry and the crash retries as span events."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from storage import open_store

from ..tracing import read_spans
from .traced_agent import STEPS

ROOT = Path(__file__).resolve().parents[2]
TRANSITION_ATTRIBUTES = {
    "gen_ai.agent.name", "gen_ai.agent.version", "gen_ai.conversation.id", "agentfsm.run.id",
    "agentfsm.trigger", "agentfsm.kind", "agentfsm.source", "agentfsm.seq", "agentfsm.attempt",
    "agentfsm.dest", "agentfsm.status", "agentfsm.idempotency_key", "agentfsm.outcome",
}  # fmt: skip
"""The attributes `statemachine/_tracing.py` documents for a transition span."""


def child(url: str, prefix: str, run_id: str, spans: Path, mode: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.integration.traced_agent", url, prefix, run_id,
         str(spans), mode],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def kill_when(proc: subprocess.Popen[str], line: str) -> None:
    """SIGKILL `proc` once it printed `line` (it is blocked inside a step then)."""
    assert proc.stdout is not None
    try:
        got = proc.stdout.readline()
        assert got == line, f"{got!r}; stderr: {proc.stderr.read() if proc.stderr else ''}"
    finally:
        proc.kill()
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL


def drive(url: str, prefix: str, run_id: str, tmp: Path, last: str) -> list[Path]:
    files = [tmp / f"spans-{n}.jsonl" for n in (1, 2, 3)]
    kill_when(child(url, prefix, run_id, files[0], "start"), "blocked t2\n")
    kill_when(child(url, prefix, run_id, files[1], "resume"), "blocked t3\n")
    finish = child(url, prefix, run_id, files[2], last)
    out, err = finish.communicate(timeout=120)
    assert finish.returncode == 0, err[-3000:]
    assert out == "done\n"
    return files


@pytest.mark.parametrize("store_url", ["redis", "embedded"], indirect=True)
async def test_a_run_killed_twice_and_finished_elsewhere_is_one_trace(
    store_url: str, prefix: str, tmp_path: Path
) -> None:
    last = "worker" if store_url.startswith("redis") else "resume"
    run_id = "traced-1"
    files = await asyncio.to_thread(drive, store_url, prefix, run_id, tmp_path, last)
    store = open_store(store_url, prefix=prefix)
    record = await store.load(run_id)
    history = await store.history(run_id)
    await store.close()
    assert record is not None and record.status == "done"
    _, trace_id, root_id, _ = record.trace.split("-")

    first, second, third = (read_spans(f) for f in files)
    roots = [s for s in first if s["name"] == "run traced_five"]
    assert len(roots) == 1 and roots[0]["span_id"] == root_id and roots[0]["parent_id"] is None
    by_process = [
        [s for s in spans if s["name"].startswith("tool ")] for spans in (first, second, third)
    ]
    # The span in flight at each kill was never ended, so never reported: each process
    # reported the transitions it committed.
    assert [[s["name"] for s in spans] for spans in by_process] == [
        ["tool t0", "tool t1"], ["tool t2"], ["tool t3", "tool t4"],
    ]  # fmt: skip
    pids = {spans[0]["pid"] for spans in by_process}
    assert len(pids) == 3

    transitions = [s for spans in by_process for s in spans]
    assert {s["trace_id"] for s in [*first, *second, *third]} == {trace_id}
    assert all(s["parent_id"] == root_id for s in transitions)
    # Parented through the stored traceparent, in the starting process too.
    assert all(s["parent_remote"] for s in transitions)

    for i, (span, event) in enumerate(zip(transitions, history[1:], strict=True)):
        attributes: dict[str, Any] = span["attributes"]
        assert set(attributes) == TRANSITION_ATTRIBUTES
        assert attributes == {
            "gen_ai.agent.name": "traced_five",
            "gen_ai.agent.version": "1",
            "gen_ai.conversation.id": run_id,
            "agentfsm.run.id": run_id,
            "agentfsm.trigger": f"t{i}",
            "agentfsm.kind": "tool",
            "agentfsm.source": f"s{i}",
            "agentfsm.seq": i + 1,
            "agentfsm.attempt": event.attempt,
            "agentfsm.dest": f"s{i + 1}",
            "agentfsm.status": "done" if i == STEPS - 1 else "running",
            "agentfsm.idempotency_key": event.key,
            "agentfsm.outcome": "committed",
        }
        assert span["status"] == "UNSET"
    assert [e.attempt for e in history[1:]] == [1, 2, 2, 2, 1]
    events = [[(e["name"], e["attributes"]) for e in s["events"]] for s in transitions]
    t1_retry = events[1][0]
    assert t1_retry[0] == "exception"
    assert t1_retry[1]["exception.message"] == "t1 fails on its first try"
    assert (t1_retry[1]["agentfsm.attempt"], t1_retry[1]["agentfsm.retry"]) == (1, True)
    crash = ("agentfsm.crash_retry", {"agentfsm.crashes": 1})
    assert events[2] == [crash] and events[3] == [crash]  # each ran again after one kill
    assert events[0] == events[4] == []
