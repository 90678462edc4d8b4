"""SIGKILL between two tool calls of one model response: after resume, neither the model
request that asked for them nor the committed call runs again; the killed call runs once more
with the same idempotency key, which holds its tool_call_id."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

from agents.examples.researcher import LIBRARY
from storage import open_store

from ..keys import plain

ROOT = Path(__file__).resolve().parents[2]


def child(url: str, run_id: str, workdir: Path, mode: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tests.integration.tool_calls_agent", url, run_id, str(workdir),
         mode],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


async def test_a_crash_between_two_tool_calls_repeats_neither_request_nor_committed_call(
    store_url: str, tmp_path: Path
) -> None:
    run_id = "research-1"
    crashed = await asyncio.to_thread(child, store_url, run_id, tmp_path, "crash")
    assert crashed.returncode == -9, crashed.stderr[-2000:]
    log = tmp_path / "effects.log"
    before = [plain(line) for line in log.read_text().splitlines()]
    key = f"{run_id}:4:act:call-read-1"  # seq 4 is the second call of the second response
    assert before == [
        "request", f"search\t{run_id}:1:act:call-search",
        "request", f"read\t{run_id}:3:act:call-read-0", f"read\t{key}",
    ]  # fmt: skip

    resumed = await asyncio.to_thread(child, store_url, run_id, tmp_path, "normal")
    assert (resumed.returncode, resumed.stdout.strip()) == (0, "done"), resumed.stderr[-2000:]
    after = [plain(line) for line in log.read_text().splitlines()]
    assert after[len(before) :] == [
        f"read\t{key}",
        "request",
    ]

    store = open_store(store_url, prefix="toolcrash")
    history = await store.history(run_id)
    record = await store.load(run_id)
    await store.close()
    assert record is not None and record.status == "done"
    assert [(e.seq, e.trigger, e.source, e.dest) for e in history] == [
        (0, "start", "", "question"),
        (1, "think", "question", "acting"),
        (2, "act", "acting", "observed"),
        (3, "think", "observed", "acting"),
        (4, "act", "acting", "acting"),
        (5, "act", "acting", "observed"),
        (6, "think", "observed", "answered"),
    ]
    assert [plain(e.key) for e in history if e.trigger == "act"] == [
        f"{run_id}:1:act:call-search", f"{run_id}:3:act:call-read-0",
        f"{run_id}:4:act:call-read-1",
    ]  # fmt: skip
    assert history[5].attempt == 2  # the killed try counted
    # Each call's result reached the model exactly once, in the model's order.
    conversation: Any = [m for e in history for m in e.messages]  # JSON
    returns = [
        (p["tool_call_id"], p["content"])
        for m in conversation if m["kind"] == "request"
        for p in m["parts"] if p["part_kind"] == "tool-return"
    ]  # fmt: skip
    assert returns == [
        ("call-search", ["idempotency", "leases"]),
        ("call-read-0", LIBRARY["idempotency"]),
        ("call-read-1", LIBRARY["leases"]),
    ]
