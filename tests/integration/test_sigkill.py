"""SIGKILL a process mid-run, again and again; fresh processes resume until the run is done.

Nothing committed is lost or executed again; the step in flight at a kill runs once more, with
the same idempotency key.
"""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from storage import EmbeddedStore, RedisStore, Store, open_store

from ..keys import plain
from ..redis_server import RedisServer
from .sigkill_agent import STEPS

ROOT = Path(__file__).resolve().parents[2]


def child(url: str, run_id: str, log: Path, hang_at: int = 0) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.integration.sigkill_agent", url, run_id, str(log),
         str(hang_at)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )  # fmt: skip


KILLS = (1, 2, 0)
"""Where each process is killed, chosen rather than left to chance. N: inside the N-th step it
runs, after that step's side effect, so the step must run again under the same key (the first
step a resumer runs is the one its killed predecessor was in; the second one is past it).
0: at a random moment once it holds the run (inside a step, between two, or in a commit)."""
IN_STEP = sum(1 for where in KILLS if where)


def crash_until_done(url: str, run_id: str, log: Path, seed: int) -> int:
    """Kill a child at each of `KILLS`, then let one finish; return how many kills hit."""
    rng = random.Random(seed)
    kills = 0
    for where in KILLS:
        proc = child(url, run_id, log, where)
        assert proc.stdout is not None
        # Wait for the child to hold the run (start-up and the wait for a dead holder's lease
        # vary), then for it to be inside its step: a line each, not a time.
        assert proc.stdout.readline() == b"ready\n", proc.communicate()[1].decode()[-3000:]
        if where:
            line = proc.stdout.readline()
            assert line.startswith(b"in t"), (line, proc.communicate()[1].decode()[-3000:])
        else:
            time.sleep(rng.uniform(0.0, 0.15))  # eight steps left take ~0.3 s: mid-run
        if proc.poll() is None:  # (a random moment may come after a starved child's end)
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.communicate()  # reap it and close its pipes
    proc = child(url, run_id, log)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()[-3000:]
    assert out.decode().split() == ["ready", "done"]
    return kills


async def check(store: Store, run_id: str, effects: str, kills: int) -> None:
    run = await store.load(run_id)
    assert run is not None
    assert (run.state, run.status, run.seq) == (f"s{STEPS}", "done", STEPS)
    assert run.memory["done"] == [f"t{i}" for i in range(STEPS)]

    history = await store.history(run_id)
    assert [e.seq for e in history] == list(range(STEPS + 1))  # gap-free
    steps = history[1:]
    assert [e.trigger for e in steps] == [f"t{i}" for i in range(STEPS)]  # each once
    assert all(e.kind == "tool" for e in steps)

    executions = Counter(line.split("\t")[0] for line in effects.splitlines())
    for e in steps:
        assert plain(e.key) == f"{run_id}:{e.seq - 1}:{e.trigger}"
        assert executions[e.key] >= 1
    # Only the step in flight at a kill runs again: at most one extra execution per kill,
    # and no key outside the committed ones (nothing ran past a commit it did not make).
    assert set(executions) == {e.key for e in steps}
    extra = sum(n - 1 for n in executions.values())
    assert IN_STEP <= extra <= kills  # each kill inside a step made that step run again


@pytest.mark.parametrize("seed", [1, 2])
async def test_sigkill_storm_on_redis(redis_server: RedisServer, tmp_path: Path, seed: int) -> None:
    log = tmp_path / "effects.log"
    run_id = f"storm-{seed}"
    kills = await asyncio.to_thread(crash_until_done, redis_server.url, run_id, log, seed)
    store = RedisStore.from_url(redis_server.url, prefix="crash")
    await check(store, run_id, log.read_text(), kills)
    await store.close()


async def test_sigkill_storm_on_the_embedded_store(tmp_path: Path) -> None:
    log = tmp_path / "effects.log"
    db = tmp_path / "store.db"
    kills = await asyncio.to_thread(crash_until_done, f"sqlite:///{db}", "storm", log, 3)
    store = EmbeddedStore(db)
    await check(store, "storm", log.read_text(), kills)
    await store.close()


async def test_sigkill_storm_on_postgres(postgres_url: str, tmp_path: Path) -> None:
    log = tmp_path / "effects.log"
    kills = await asyncio.to_thread(crash_until_done, postgres_url, "storm", log, 4)
    store = open_store(postgres_url)
    await check(store, "storm", log.read_text(), kills)
    await store.close()
