"""A table agent without an `llm()` step declares and runs without importing pydantic-ai
(issue 30: its peak memory is the runner's, not a model library's)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import json, sys
from pydantic import BaseModel
from agents import Agent, tool, wait
from storage import open_store

class Memory(BaseModel):
    n: int = 0

def bump(m: Memory) -> int:
    return m.n + 1

steps = [tool("a", "s0", "s1", bump, into="n"), wait("go", "s1", "s2", payload=int, into="n"),
         tool("b", "s2", "s3", bump, into="n")]
agent = Agent(name="probe", memory=Memory, initial="s0", final="s3", transitions=steps)
run = agent.run_sync(open_store(f"sqlite:///{sys.argv[1]}"), Memory())
imported = "pydantic_ai" in sys.modules
print(json.dumps({"status": run.status, "n": run.memory.n, "imported": imported}))
"""


def test_a_table_agent_runs_without_importing_pydantic_ai(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(tmp_path / "s.db")], cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found == {"status": "waiting", "n": 1, "imported": False}
