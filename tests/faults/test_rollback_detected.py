"""Commits a store lost after the process that made them is gone: a later process on the same
host takes the run over, is told which commits were lost (`CommitsLost`, from what this host
noted as acknowledged: `storage._acked`), never resumes silently, and then re-runs the lost
steps under their same idempotency keys."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from statemachine.errors import CommitsLost
from storage import open_store

from ..redis_server import RedisServer
from .rollback_child import make_agent

pytestmark = pytest.mark.redis
ROOT = Path(__file__).resolve().parents[2]


async def test_a_later_process_names_the_commits_a_restart_lost(
    redis_factory: type[RedisServer], tmp_path: Path
) -> None:
    server = redis_factory(tmp_path / "redis").start()  # no AOF: a restart keeps the SAVE
    done = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "tests.faults.rollback_child", server.url],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    lines = (line.split(" ", 1) for line in done.stdout.splitlines())
    acked = {int(seq): key for seq, key in lines}
    assert sorted(acked) == [1, 2, 3]
    server.kill()
    server.start()  # back at seq 1: commits 2 and 3 are gone
    keys: list[str] = []
    agent = make_agent(keys)
    store = open_store(server.url, prefix="later")
    try:
        run = await agent.resume(store, "r")
        assert run.seq == 1
        with pytest.raises(CommitsLost, match=r"lost commits 2\.\.3") as lost:
            await run.step()
        assert list(lost.value.lost) == [2, 3] and not keys  # nothing ran before it was said
        again = await agent.resume(store, "r")  # said once: now the run goes on
        await again.until_done()
        assert (again.status, again.memory.n) == ("done", 4)
        history = {e.seq: e.key for e in await again.history()}
        assert all(history[seq] == key for seq, key in acked.items())  # their same keys
        assert keys[:2] == [acked[2], acked[3]]
    finally:
        await store.close()
