"""Watching a run from another process while its model streams: tokens before the commit,
the committed event once, and the tokens of a try killed mid-stream kept under its attempt.
Each step waits for a readiness signal (a file the model touches, a line the watcher prints)."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROGRAM = "tests.integration.stream_agent"


_children: list[subprocess.Popen[str]] = []


@pytest.fixture(autouse=True)
def _kill_children() -> Iterator[None]:
    """A failed test leaves no process behind, nor an open pipe."""
    yield
    while _children:
        child = _children.pop()
        child.kill()
        child.wait()
        for stream in (child.stdout, child.stderr):
            if stream is not None:
                stream.close()


def spawn(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen(
        [sys.executable, "-m", *args], cwd=ROOT, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    _children.append(child)
    return child


class Lines:
    """A child's stdout, read in a thread: wait for the line that says what you need."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.seen: list[dict[str, Any]] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        assert proc.stdout is not None
        threading.Thread(target=self._read, args=(proc.stdout,), daemon=True).start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self._lines.put(line)
        self._lines.put(None)

    def until(self, done: Any, what: str, within: float = 60) -> list[dict[str, Any]]:
        """Read items until `done(seen)`; an assertion naming `what` if the child ends or
        `within` seconds pass first (a loose bound: a hung child must not hang the test)."""
        deadline = time.monotonic() + within
        while not done(self.seen):
            try:
                line = self._lines.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                raise AssertionError(f"never saw {what}; saw {self.seen}") from None
            if line is None:
                err = self.proc.stderr.read() if self.proc.stderr else ""
                raise AssertionError(f"the watcher ended before {what}: {self.seen} {err[-2000:]}")
            self.seen.append(json.loads(line))
        return self.seen


def wait_for_file(path: Path, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 60
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.monotonic() < deadline, f"{path.name} never appeared"
        time.sleep(0.01)


def finish(proc: subprocess.Popen[str], expected: str = "done") -> None:
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and out.strip() == expected, err[-2000:]


def committed(seen: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [i for i in seen if i["kind"] == "committed"]


def text_of(seen: list[dict[str, Any]], attempt: int) -> str:
    return "".join(i["text"] for i in seen if i["kind"] == "text" and i["attempt"] == attempt)


def test_a_watcher_sees_tokens_before_the_commit(store_url: str, tmp_path: Path) -> None:
    run_id = f"watch-{tmp_path.name}"
    driver = spawn(PROGRAM, "drive", store_url, run_id, str(tmp_path), "gated")
    wait_for_file(tmp_path / "streaming", driver)
    watcher = Lines(spawn(PROGRAM, "watch", store_url, run_id))
    seen = watcher.until(lambda s: text_of(s, 1) == "one two ", "the first tokens")
    assert [i["seq"] for i in committed(seen)] == [0]  # the step has not committed
    (tmp_path / "release").touch()
    seen = watcher.until(lambda s: len(committed(s)) == 2, "the committed event")
    finish(driver)
    assert watcher.proc.wait(timeout=60) == 0  # the run is done: the watch ends
    answer = committed(seen)[1]
    assert answer["trigger"] == "answer" and answer["attempt"] == 1
    assert answer["answer"] == text_of(seen, 1) == "one two three four"
    assert seen.index(answer) == len(seen) - 1
    offsets = [i["offset"] for i in seen]
    assert len(set(offsets)) == len(offsets)


def test_tokens_of_a_try_killed_mid_stream_keep_their_attempt(
    store_url: str, tmp_path: Path
) -> None:
    run_id = f"kill-{tmp_path.name}"
    driver = spawn(PROGRAM, "drive", store_url, run_id, str(tmp_path), "crash")
    wait_for_file(tmp_path / "streaming", driver)
    watcher = Lines(spawn(PROGRAM, "watch", store_url, run_id))
    watcher.until(lambda s: text_of(s, 1) == "one two ", "attempt 1's tokens")
    driver.send_signal(signal.SIGKILL)
    driver.communicate()
    resumed = spawn(PROGRAM, "drive", store_url, run_id, str(tmp_path), "normal")
    seen = watcher.until(lambda s: len(committed(s)) == 2, "the committed event")
    finish(resumed)
    assert watcher.proc.wait(timeout=60) == 0
    assert text_of(seen, 1) == "one two "  # the killed try's partial tokens
    assert text_of(seen, 2) == "one two three four"
    step = [i for i in seen if i["seq"] == 1]
    attempts = [i["attempt"] for i in step]
    assert attempts == sorted(attempts)  # attempt 1's items, then attempt 2's, then the commit
    [answer] = [i for i in committed(seen) if i["seq"] == 1]
    assert answer["attempt"] == 2 and answer["answer"] == text_of(seen, 2)
    assert step[-1] is answer

    # A watcher started afterwards from an offset in the middle gets exactly the rest.
    middle = seen[len(seen) // 2]["offset"]
    again = Lines(spawn(PROGRAM, "watch", store_url, run_id, middle))
    rest = again.until(lambda s: len(committed(s)) >= 1 and s[-1]["seq"] == 1 and
                       s[-1]["kind"] == "committed", "the rest")  # fmt: skip
    assert again.proc.wait(timeout=60) == 0
    assert rest == seen[len(seen) // 2 + 1 :]


def test_agentfsm_watch_prints_tokens_and_committed_steps(store_url: str, tmp_path: Path) -> None:
    run_id = f"cli-{tmp_path.name}"
    driver = spawn(PROGRAM, "drive", store_url, run_id, str(tmp_path), "gated")
    wait_for_file(tmp_path / "streaming", driver)
    cli = spawn("agents", "watch", run_id, "--store", store_url)
    (tmp_path / "release").touch()
    finish(driver)
    out, err = cli.communicate(timeout=60)
    assert cli.returncode == 0, err
    lines = out.splitlines()
    assert "one two three four" in lines
    steps = [line for line in lines if "✓" in line]
    assert len(steps) == 2 and "answer" in steps[1] and "offset 1" in steps[1]
    assert lines.index("one two three four") < lines.index(steps[1])

    after = spawn("agents", "watch", run_id, "--after", "1", "--store", store_url)
    out, err = after.communicate(timeout=60)
    assert after.returncode == 0 and out.strip() == "", (out, err)
