"""SIGKILL inside a tool call of a plain pydantic-ai agent run by `DurableAgent`, and inside a
call that was approved from another process: after a rerun with the same run id in a new
process the output is an uninterrupted run's, no committed model request is asked again, no
committed or approved call runs twice, and the killed call runs once more under its key.

What kills nothing (the uninterrupted run to compare with, the approval) runs in the test's own
process; the agent's runs that a test crashes, parks or resumes each run in a new process."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agents.durable._segments import JOURNALS_HANDLERS
from storage import Event, open_store

from . import durable_agent
from .durable_agent import PREFIX

ROOT = Path(__file__).resolve().parents[2]
EXPECTED = "lookup: book sold by Acme; convert: 25.0"


def command(url: str, run_id: str, workdir: Path, mode: str, via: str = "run") -> list[str]:
    return [
        sys.executable,
        "-m",
        "tests.integration.durable_agent",
        url,
        run_id,
        str(workdir),
        mode,
        via,
    ]


def child(
    url: str, run_id: str, workdir: Path, mode: str, via: str = "run"
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command(url, run_id, workdir, mode, via), cwd=ROOT, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip


async def history(url: str, run_id: str) -> list[Event]:
    store = open_store(url, prefix=PREFIX)
    try:
        return await store.history(run_id)
    finally:
        await store.close()


def tool_keys(events: list[Event]) -> dict[str, str]:
    return {
        str(e.output["tool"]): e.key for e in events
        if e.trigger == "tool_call" and e.kind == "tool" and isinstance(e.output, dict)
    }  # fmt: skip


async def test_a_crash_inside_a_tool_call_repeats_only_that_call(
    store_url: str, tmp_path: Path
) -> None:
    clean_dir = tmp_path / "clean"
    clean_dir.mkdir()
    # The uninterrupted run to compare with: nothing is killed, so this process runs it.
    assert await durable_agent.answer(store_url, "shop-clean", str(clean_dir), "normal") == EXPECTED

    run_id = "shop-1"
    crashed = await asyncio.to_thread(child, store_url, run_id, tmp_path, "crash")
    assert crashed.returncode == -9, crashed.stderr[-2000:]
    log = tmp_path / "effects.log"
    before = log.read_text().splitlines()
    assert [line.split("\t")[0] for line in before] == ["request", "lookup", "convert"]

    resumed = await asyncio.to_thread(child, store_url, run_id, tmp_path, "normal")
    assert (resumed.returncode, resumed.stdout.strip()) == (0, EXPECTED), resumed.stderr[-2000:]
    after = log.read_text().splitlines()[len(before) :]
    # The killed call once more, with the same key; then the model once more (the answer).
    assert after == [before[2], "request"]

    events = await history(store_url, run_id)
    keys = tool_keys(events)
    assert before[1:] == [f"lookup\t{keys['lookup']}", f"convert\t{keys['convert']}"]
    assert [e.trigger for e in events] == [
        "start", "model_request", "tool_call", "tool_call", "model_request", "output"
    ]  # fmt: skip
    assert events[-1].status == "done"
    assert events[3].attempt == 2  # the killed try counted
    assert [(e.usage or {}).get("requests", 0) for e in events] == [0, 1, 0, 0, 1, 0]
    assert [(e.usage or {}).get("tool_calls", 0) for e in events] == [0, 0, 1, 1, 0, 0]
    clean_events = await history(store_url, "shop-clean")
    assert [e.output for e in events[1:]] == [e.output for e in clean_events[1:]]

    # Running it again returns the same result and asks nobody anything.
    again = await asyncio.to_thread(child, store_url, run_id, tmp_path, "normal")
    assert (again.returncode, again.stdout.strip()) == (0, EXPECTED), again.stderr[-2000:]
    assert len(log.read_text().splitlines()) == len(before) + 2


async def test_a_crash_inside_an_approved_call_runs_it_once_more_and_only_it(
    store_url: str, tmp_path: Path
) -> None:
    run_id = "shop-gated"
    parked = await asyncio.to_thread(child, store_url, run_id, tmp_path, "gated")
    assert (parked.returncode, parked.stdout.strip()) == (0, "deferred call-convert"), parked.stderr
    log = tmp_path / "effects.log"
    assert [line.split("\t")[0] for line in log.read_text().splitlines()] == ["request", "lookup"]

    # Nobody approved yet: running it again runs nothing and still defers.
    still = await asyncio.to_thread(child, store_url, run_id, tmp_path, "gated")
    assert still.stdout.strip() == "deferred call-convert", still.stderr
    assert len(log.read_text().splitlines()) == 2

    # Approved from another process than the agent's (this one), as a CLI would.
    assert await durable_agent.answer(store_url, run_id, str(tmp_path), "approve") == "approved"

    # The approved call starts, and the process is killed inside it.
    in_call = tmp_path / "in-call"
    proc = await asyncio.create_subprocess_exec(
        *command(store_url, run_id, tmp_path, "hang"), cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        # The readiness signal: the call has started (the child renames the file into place
        # with its key in it, so it is never seen empty).
        deadline = time.monotonic() + 60
        while not in_call.exists():
            assert proc.returncode is None, await proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "the approved call did not start within 60 s"
            await asyncio.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        await proc.wait()
    assert proc.returncode == -9
    killed_key = in_call.read_text()

    resumed = await asyncio.to_thread(child, store_url, run_id, tmp_path, "gated")
    assert (resumed.returncode, resumed.stdout.strip()) == (0, EXPECTED), resumed.stderr[-2000:]
    lines = log.read_text().splitlines()
    assert [line.split("\t")[0] for line in lines] == [
        "request", "lookup", "convert", "convert", "request"
    ]  # fmt: skip
    events = await history(store_url, run_id)
    keys = tool_keys(events)
    assert lines[2] == lines[3] == f"convert\t{keys['convert']}" and killed_key == keys["convert"]
    assert [e.trigger for e in events] == [
        "start", "model_request", "tool_call", "defer", "answer", "tool_call", "model_request",
        "output",
    ]  # fmt: skip
    answer = events[4].output
    assert isinstance(answer, dict) and answer["approved"] is True and answer["digest"]
    assert events[5].attempt == 2

    again = await asyncio.to_thread(child, store_url, run_id, tmp_path, "gated")
    assert again.stdout.strip() == EXPECTED
    assert len(log.read_text().splitlines()) == 5


@pytest.mark.parametrize(
    ("store_url", "via"),
    [
        ("embedded", "iter"),
        ("redis", "run_stream"),
        ("embedded", "run_stream_events"),
        ("redis", "capability"),
    ],
    indirect=["store_url"],
)  # each way on one store (both stores are covered): the suite's time is short
async def test_a_crash_in_a_tool_call_of_iter_or_a_stream_repeats_only_that_call(
    store_url: str, tmp_path: Path, via: str
) -> None:
    """Killed inside a tool call while driven node by node, streamed, or run by the plain agent
    with the `AgentfsmDurability` capability, and driven the same way again in a new process:
    the output is an uninterrupted run's, only the killed call runs again (under its key), and
    each committed step is in the history once."""
    run_id = f"shop-{via}"
    crashed = await asyncio.to_thread(child, store_url, run_id, tmp_path, "crash", via)
    assert crashed.returncode == -9, crashed.stderr[-2000:]
    log = tmp_path / "effects.log"
    before = log.read_text().splitlines()
    assert [line.split("\t")[0] for line in before] == ["request", "lookup", "convert"]

    resumed = await asyncio.to_thread(child, store_url, run_id, tmp_path, "normal", via)
    assert (resumed.returncode, resumed.stdout.strip()) == (0, EXPECTED), resumed.stderr[-2000:]
    assert log.read_text().splitlines()[len(before) :] == [before[2], "request"]
    events = await history(store_url, run_id)
    assert [e.trigger for e in events] == [
        "start", "model_request", "tool_call", "tool_call", "model_request", "output"
    ]  # fmt: skip
    assert events[-1].status == "done" and events[3].attempt == 2
    assert tool_keys(events)["convert"] == before[2].split("\t")[1]


@pytest.mark.parametrize("store_url", ["embedded"], indirect=True)  # one store: time is short
async def test_a_crash_inside_an_output_function_runs_only_it_again_and_once(
    store_url: str, tmp_path: Path
) -> None:
    """Killed inside the output function: the rerun calls the function once more (nothing
    else: the model requests and tool calls are committed), and a run read back after that
    does not call it again."""
    run_id = "shop-report"
    crashed = await asyncio.to_thread(child, store_url, run_id, tmp_path, "crash-report")
    assert crashed.returncode == -9, crashed.stderr[-2000:]
    log = tmp_path / "effects.log"
    kinds = [line.split("\t")[0] for line in log.read_text().splitlines()]
    assert kinds == ["request", "lookup", "convert", "request", "report"]
    resumed = await asyncio.to_thread(child, store_url, run_id, tmp_path, "report")
    assert (resumed.returncode, resumed.stdout.strip()) == (0, EXPECTED), resumed.stderr[-2000:]
    again = await asyncio.to_thread(child, store_url, run_id, tmp_path, "report")
    assert (again.returncode, again.stdout.strip()) == (0, EXPECTED), again.stderr[-2000:]
    kinds = [line.split("\t")[0] for line in log.read_text().splitlines()]
    assert kinds == ["request", "lookup", "convert", "request", "report", "report"]
    events = await history(store_url, run_id)
    assert [e.trigger for e in events] == [
        "start", "model_request", "tool_call", "tool_call", "model_request", "output_call",
        "output",
    ]  # fmt: skip
    assert events[5].attempt == 2


@pytest.mark.parametrize("store_url", ["redis"], indirect=True)  # one store: time is short
async def test_a_crash_in_a_call_a_handler_approved_in_the_run_asks_the_handler_once(
    store_url: str, tmp_path: Path
) -> None:
    """A `HandleDeferredToolCalls` handler approves a call in the run (plain output type), and
    the process is killed inside the approved call: the rerun runs only that call again, under
    its key, and does not ask the handler again (its answer is committed)."""
    run_id = "shop-handled"
    crashed = await asyncio.to_thread(child, store_url, run_id, tmp_path, "crash-handled")
    assert crashed.returncode == -9, crashed.stderr[-2000:]
    log = tmp_path / "effects.log"
    before = log.read_text().splitlines()
    assert [line.split("\t")[0] for line in before] == ["request", "lookup", "handler", "convert"]
    resumed = await asyncio.to_thread(child, store_url, run_id, tmp_path, "handled")
    assert (resumed.returncode, resumed.stdout.strip()) == (0, EXPECTED), resumed.stderr[-2000:]
    after = log.read_text().splitlines()[len(before) :]
    if not JOURNALS_HANDLERS:  # pydantic-ai < 2.78: the handler is asked again on replay
        after.remove("handler")
    assert after == [before[3], "request"]
    events = await history(store_url, run_id)
    assert [e.trigger for e in events] == [
        "start", "model_request", "tool_call", "decision", "tool_call", "model_request", "output"
    ] if JOURNALS_HANDLERS else [
        "start", "model_request", "tool_call", "tool_call", "model_request", "output"
    ]  # fmt: skip


@pytest.mark.parametrize("store_url", ["embedded"], indirect=True)  # one store: time is short
async def test_a_crash_after_a_call_that_delegated_keeps_the_delegates_usage(
    store_url: str, tmp_path: Path
) -> None:
    """`lookup` runs a helper agent with the run's usage (pydantic-ai's delegation), then the
    process dies inside `convert`: the resumed run replays `lookup` without running it (nor
    its helper) and still counts the helper's request, as the uninterrupted run does."""
    clean_dir = tmp_path / "clean"
    clean_dir.mkdir()
    clean = await durable_agent.answer(store_url, "dl-clean", str(clean_dir), "delegate")
    assert clean == f"{EXPECTED} | 3 requests"  # two of the agent's, one of the helper's

    crashed = await asyncio.to_thread(child, store_url, "dl-1", tmp_path, "crash-delegate")
    assert crashed.returncode == -9, crashed.stderr[-2000:]
    resumed = await asyncio.to_thread(child, store_url, "dl-1", tmp_path, "delegate")
    assert (resumed.returncode, resumed.stdout.strip()) == (0, clean), resumed.stderr[-2000:]
    calls = [line.split("\t")[0] for line in (tmp_path / "effects.log").read_text().splitlines()]
    assert calls == ["request", "lookup", "convert", "convert", "request"]
