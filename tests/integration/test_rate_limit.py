"""A rate limit held in the store is shared by three processes (real Redis, embedded): no
window of the offline model's call times holds more than the bucket allows, and a 429 with
Retry-After in one process pauses all three."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

from .rate_agent import BURST, PAUSE, RATE

ROOT = Path(__file__).resolve().parents[2]
JITTER = 0.1
"""Seconds a call may be logged late after it took its slot (a busy machine's scheduling):
windows are checked that much shorter than a second."""


def _child(url: str, workdir: Path, name: str, runs: int, mode: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.integration.rate_agent", url, str(workdir), name,
         str(runs), mode],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip


def _drive(url: str, workdir: Path, runs: int, first_fails: bool) -> list[str]:
    names = ["p0", "p1", "p2"]
    modes = {"p0": "429"} if first_fails else {}
    follow = "follow" if first_fails else ""
    children = [_child(url, workdir, n, runs, modes.get(n, follow)) for n in names]
    try:
        for c in children:
            assert c.stdout is not None
            line = c.stdout.readline().strip()
            assert line == b"ready", c.communicate()[1].decode()[-3000:]
        for c in children:
            assert c.stdin is not None
            c.stdin.write(b"go\n")
            c.stdin.flush()
        outs = []
        for c in children:
            out, err = c.communicate(timeout=120)
            assert c.returncode == 0, err.decode()[-3000:]
            outs.append(out.decode().strip())
        return outs
    finally:
        for c in children:
            if c.poll() is None:
                c.kill()


def _lines(workdir: Path, kind: str) -> list[list[str]]:
    text = (workdir / "calls.log").read_text().splitlines()
    return [line.split()[1:] for line in text if line.split()[0] == kind]


def _most_in_a_window(times: list[float], width: float) -> int:
    times = sorted(times)
    return max(sum(1 for t in times if start <= t < start + width) for start in times)


async def test_three_processes_share_one_rate_limit(store_url: str, tmp_path: Path) -> None:
    outs = await asyncio.to_thread(_drive, store_url, tmp_path, 4, False)
    assert outs == ["done done done done"] * 3
    calls = [float(at) for _, at in _lines(tmp_path, "call")]
    assert len(calls) == 24
    most = _most_in_a_window(calls, 1.0 - JITTER)
    print(f"most calls in one second: {most} (rate {RATE}/s, burst {BURST})")
    assert most <= BURST + RATE
    waited = {name for name, _ in _lines(tmp_path, "wait")}
    assert waited == {"p0", "p1", "p2"}  # each process had to wait for the shared limit


async def test_a_429_with_retry_after_pauses_every_process(store_url: str, tmp_path: Path) -> None:
    outs = await asyncio.to_thread(_drive, store_url, tmp_path, 3, True)
    assert outs == ["done done done"] * 3
    [(by, at)] = _lines(tmp_path, "paused")
    [(_, before)] = _lines(tmp_path, "pausing")
    assert by == "p0"
    paused, set_after = float(at), float(before)
    # The pause was set between `set_after` and `paused`: a slot asked for after `paused`
    # may be granted only once the pause ran out, so its answer comes after set_after + PAUSE.
    slots = [(n, float(s), float(e)) for n, s, e, ok in _lines(tmp_path, "slot") if ok == "1"]
    during = [
        (n, round(e - set_after, 3)) for n, s, e in slots if s > paused and e < set_after + PAUSE
    ]
    assert during == []  # nobody was given a slot while the key was paused
    calls = [(name, float(t)) for name, t in _lines(tmp_path, "call")]
    after = {n for n, t in calls if t >= set_after + PAUSE}
    assert after == {"p0", "p1", "p2"}
    paused_waits = {name for name, why in _lines(tmp_path, "wait") if why == "paused"}
    assert paused_waits == {"p0", "p1", "p2"}
