"""`agentfsm ui` as a real process: started on a free port, ready once it prints its URL."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from queue import Empty, Queue

ROOT = Path(__file__).resolve().parents[3]
READY = "agentfsm ui: serving "

__all__ = ["ROOT", "agentfsm_env", "ui_server"]


def agentfsm_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), **extra}


@contextmanager
def ui_server(
    *args: str, timeout: float = 60, launch: tuple[str, ...] = ("-m", "agents")
) -> Iterator[tuple[str, list[str]]]:
    """Run `agentfsm ui --port 0 ARGS...`; yield its printed URL (with the token) and the
    lines it printed before that (stdout and stderr, which a thread keeps reading). Stops
    it afterwards. `launch` is what follows `python` to start the command."""
    proc = subprocess.Popen(
        [sys.executable, *launch, "ui", "--port", "0", *args],
        cwd=ROOT, env=agentfsm_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    lines: Queue[str | None] = Queue()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    before: list[str] = []
    try:
        while True:
            try:
                line = lines.get(timeout=timeout)
            except Empty:
                raise AssertionError(f"agentfsm ui said no URL in {timeout} s: {before}") from None
            if line is None:
                raise AssertionError(f"agentfsm ui ended before it was ready: {before}")
            if line.startswith(READY):
                yield line[len(READY) :].strip(), before
                return
            before.append(line)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
