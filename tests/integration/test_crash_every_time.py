"""A step that kills its own process on every try: resumers count the deaths durably and,
after `crash_retries + 1` of them, drive the run into its failure state with the deaths
recorded, instead of crash-looping forever."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

from storage import open_store

from .suicide_agent import CRASH_RETRIES

DEATHS = CRASH_RETRIES + 1

ROOT = Path(__file__).resolve().parents[2]


def resume_until_settled(url: str, run_id: str, log: Path, *mode: str) -> list[int]:
    """Start fresh processes on the run until one exits by itself; their return codes."""
    codes: list[int] = []
    for _ in range(DEATHS + 3):
        proc = subprocess.run(
            [sys.executable, "-m", "tests.integration.suicide_agent", url, run_id, str(log),
             *mode],
            cwd=ROOT, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        codes.append(proc.returncode)
        if proc.returncode != -9:
            assert (proc.returncode, proc.stdout.strip()) == (0, "failed"), proc.stderr[-2000:]
            return codes
    raise AssertionError(f"still crashing after {len(codes)} processes: {codes}")


async def test_a_step_that_kills_its_process_every_time_fails_after_crash_retries_deaths(
    store_url: str, tmp_path: Path
) -> None:
    log = tmp_path / "tries.log"
    codes = await asyncio.to_thread(resume_until_settled, store_url, "doomed", log)
    assert codes == [-9] * DEATHS + [0]

    store = open_store(store_url, prefix="suicide")
    record = await store.load("doomed")
    history = await store.history("doomed")
    await store.close()
    assert record is not None
    key = f"doomed:{record.nonce}:1:crash"  # every try under one key
    assert log.read_text().splitlines() == [f"{key}\t{n}" for n in range(1, DEATHS + 1)]
    # The commit that ended the step reset the crash count for the next transition.
    assert (record.state, record.status, record.seq, record.crashes) == ("failed", "failed", 2, 0)
    assert [(e.trigger, e.kind) for e in history] == [
        ("start", "start"), ("prepare", "tool"), ("crash", "error"),
    ]  # fmt: skip
    failed = history[-1]
    assert failed.error is not None and failed.attempt == DEATHS
    assert failed.error["attempt"] == DEATHS
    assert f"cut short by its process dying {DEATHS} times (crash_retries={CRASH_RETRIES})" in (
        str(failed.error["message"])
    )
    assert failed.key == f"{key}:failed:2"  # the seq it commits at


async def test_deaths_in_the_first_step_of_agent_run_count_too(
    store_url: str, tmp_path: Path
) -> None:
    """`agent.run` stores its first step's "started" item with the run (no round trip of its
    own): a process that dies in that step is still charged with the death."""
    log = tmp_path / "tries.log"
    codes = await asyncio.to_thread(resume_until_settled, store_url, "doomed1", log, "first")
    assert codes == [-9] * DEATHS + [0]
    store = open_store(store_url, prefix="suicide")
    record = await store.load("doomed1")
    history = await store.history("doomed1")
    await store.close()
    assert record is not None and (record.state, record.status) == ("failed", "failed")
    key = f"doomed1:{record.nonce}:0:crash"
    assert log.read_text().splitlines() == [f"{key}\t{n}" for n in range(1, DEATHS + 1)]
    assert [(e.trigger, e.kind, e.attempt) for e in history] == [
        ("start", "start", 1), ("crash", "error", DEATHS),
    ]  # fmt: skip
