"""Crash accounting counts only deaths while a step was running: processes killed after
`agent.run` created and leased the run, before its first step, use up no `crash_retries`."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

from storage import open_store

ROOT = Path(__file__).resolve().parents[2]


def child(url: str, run_id: str, log: Path, mode: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tests.integration.early_death_agent", url, run_id, str(log), mode],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


async def test_kills_before_the_first_step_are_not_deaths_of_that_step(
    store_url: str, tmp_path: Path
) -> None:
    log = tmp_path / "tries.log"
    for _ in range(3):  # crash_retries=0: one death charged to the step would fail the run
        killed = await asyncio.to_thread(child, store_url, "early", log, "die")
        assert killed.returncode == -9, killed.stderr[-2000:]
    done = await asyncio.to_thread(child, store_url, "early", log, "live")
    assert (done.returncode, done.stdout.strip()) == (0, "done"), done.stderr[-2000:]
    assert log.read_text().splitlines() == ["1"]  # the step ran once, as its first try
    store = open_store(store_url, prefix="early")
    try:
        history = await store.history("early")
    finally:
        await store.close()
    assert [(e.trigger, e.kind, e.attempt) for e in history] == [
        ("start", "start", 1), ("work", "tool", 1),
    ]  # fmt: skip
