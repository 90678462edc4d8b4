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
from .rollback_child import Count, make_agent

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
    acked: dict[str, dict[int, str]] = {"r": {}, "h": {}}
    for line in done.stdout.splitlines():
        run_id, seq, key = line.split(" ", 2)
        acked[run_id][int(seq)] = key
    assert sorted(acked["r"]) == sorted(acked["h"]) == [1, 2, 3]
    server.kill()
    server.start()  # back at seq 1: commits 2 and 3 are gone
    keys: list[str] = []
    agent = make_agent(keys)
    store = open_store(server.url, prefix="later")
    try:
        # `r` by `resume`; `h` by `start` of its id with the lease taken (as `agent.run`).
        for run in [
            await agent.resume(store, "r"),
            await agent.start(store, Count(), run_id="h", hold=True),
        ]:
            assert run.seq == 1
            with pytest.raises(CommitsLost, match=r"lost commits 2\.\.3") as lost:
                await run.step()
            assert list(lost.value.lost) == [2, 3] and not keys  # nothing ran before that
        for run_id in ("r", "h"):
            keys.clear()
            again = await agent.resume(store, run_id)  # said once: now the run goes on
            await again.until_done()
            assert (again.status, again.memory.n) == ("done", 4)
            history = {e.seq: e.key for e in await again.history()}
            assert all(history[seq] == key for seq, key in acked[run_id].items())  # same keys
            assert keys[:2] == [acked[run_id][2], acked[run_id][3]]
    finally:
        await store.close()
