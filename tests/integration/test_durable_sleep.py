"""SIGKILL during a durable sleep: a `DurableAgent` run waiting between two polls of a
suspended response (pydantic-ai's continuation delay, an hour here) is killed during the wait;
resumed in another process, it waits only what is left of the hour (the committed wake-up time
minus now), not the hour again, and sends nothing it committed again."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from agents.durable import _sleep
from storage import open_store

from .sleep_agent import DELAY, EXPECTED, PREFIX, make_agent

ROOT = Path(__file__).resolve().parents[2]


class Waits:
    """Stands in for the resumed process's wait (`agents.durable._sleep.sleep`)."""

    def __init__(self) -> None:
        self.seconds: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.seconds.append(seconds)


async def test_a_run_killed_during_its_wait_waits_only_what_is_left_when_resumed(
    store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_id = "polled-1"
    sleeping = tmp_path / "sleeping"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.integration.sleep_agent", store_url, run_id, str(tmp_path),
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        # The readiness signal: the wait's wake-up time is committed (then the child waits).
        deadline = time.monotonic() + 60
        while not sleeping.exists():
            assert proc.returncode is None, await proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "the run did not start its wait within 60 s"
            await asyncio.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        await proc.wait()
    killed_at = time.time()
    assert proc.returncode == -9
    wake = float(sleeping.read_text())
    log = tmp_path / "effects.log"
    assert log.read_text().splitlines() == ["request"]

    waits = Waits()
    monkeypatch.setattr(_sleep, "sleep", waits)
    store = open_store(store_url, prefix=PREFIX)
    try:
        result = await make_agent(tmp_path, store).run(run_id=run_id)
        events = await store.history(run_id)
    finally:
        await store.close()
    assert result.output == EXPECTED
    # One wait, of what was left of the hour at the resume: less than what was left at the kill.
    assert len(waits.seconds) == 1
    assert 0 < waits.seconds[0] <= wake - killed_at < DELAY
    assert [e.trigger for e in events] == [
        "start", "model_request", "sleep", "model_request", "output"
    ]  # fmt: skip
    slept = events[2].output
    assert isinstance(slept, dict) and (slept["wake"], slept["seconds"]) == (wake, DELAY)
    # The first request was answered from the history; only the poll was sent.
    assert log.read_text().splitlines() == ["request", "request"]
