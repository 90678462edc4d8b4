"""SIGKILL inside the second of two tool calls of one model response of a plain pydantic-ai
agent run by `DurableAgent`: after a rerun with the same run id in a new process, the model is
asked once more (for the answer), the first tool does not run again, the second runs once more
with the same idempotency key, and the output is an uninterrupted run's."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

from storage import open_store

from ..keys import plain

ROOT = Path(__file__).resolve().parents[2]


def child(url: str, run_id: str, workdir: Path, mode: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tests.integration.durable_agent", url, run_id, str(workdir), mode],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


async def test_a_crash_inside_a_tool_call_repeats_only_that_call(
    store_url: str, tmp_path: Path
) -> None:
    clean_dir = tmp_path / "clean"
    clean_dir.mkdir()
    clean = await asyncio.to_thread(child, store_url, "shop-clean", clean_dir, "normal")
    assert clean.returncode == 0, clean.stderr[-2000:]
    expected = "lookup: book sold by Acme; convert: 25.0"
    assert clean.stdout.strip() == expected

    run_id = "shop-1"
    crashed = await asyncio.to_thread(child, store_url, run_id, tmp_path, "crash")
    assert crashed.returncode == -9, crashed.stderr[-2000:]
    log = tmp_path / "effects.log"
    before = [plain(line) for line in log.read_text().splitlines()]
    first_key = f"{run_id}:1:tool_call:call-lookup"
    second_key = f"{run_id}:2:tool_call:call-convert"
    assert before == ["request", f"lookup\t{first_key}", f"convert\t{second_key}"]

    resumed = await asyncio.to_thread(child, store_url, run_id, tmp_path, "normal")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert resumed.stdout.strip() == expected
    # The model once more (the answer); the second tool once more, with the same key.
    after = [plain(line) for line in log.read_text().splitlines()]
    assert after[len(before) :] == [
        f"convert\t{second_key}",
        "request",
    ]

    store = open_store(store_url, prefix="durablecrash")
    history = await store.history(run_id)
    record = await store.load(run_id)
    await store.close()
    assert record is not None and record.status == "done"
    assert [(e.seq, e.trigger, e.source, e.dest, plain(e.key)) for e in history] == [
        (0, "start", "", "model", f"{run_id}:start"),
        (1, "model_request", "model", "tools", f"{run_id}:0:model_request"),
        (2, "tool_call", "tools", "tools", first_key),
        (3, "tool_call", "tools", "model", second_key),
        (4, "model_request", "model", "done", f"{run_id}:3:model_request"),
    ]
    assert history[3].attempt == 2  # the killed try counted
    assert [e.usage["requests"] if e.usage else 0 for e in history] == [0, 1, 0, 0, 1]

    # Running it again returns the same result and asks nobody anything.
    again = await asyncio.to_thread(child, store_url, run_id, tmp_path, "normal")
    assert (again.returncode, again.stdout.strip()) == (0, expected), again.stderr[-2000:]
    assert len(log.read_text().splitlines()) == len(before) + 2
