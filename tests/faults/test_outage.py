"""Hostile infrastructure: a Redis outage under a worker fleet, a server that never answers.

- A fleet of worker processes (`agentfsm worker`) rides out Redis being stopped and restarted
  with its AOF: runs submitted before the outage, during it (they fail to submit, with a
  clear error) and after it all finish, and no worker process exits. The outage lasts 12 s
  (30 s with `--full`): the worker's backoff is capped at 5 s and a call's retries at about
  5 s, so 12 s already covers several capped pauses and failed calls, as 30 s does.
- A TCP server that accepts connections and never answers: opening the store and a CLI
  command end with a clear `StoreUnavailable` (exit 2) instead of hanging.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from storage import RedisStore
from storage.errors import StoreUnavailable

from ..redis_server import RedisServer
from ..workers.work_agent import STEPS, Chain, chain

ROOT = Path(__file__).resolve().parents[2]


def worker(url: str, name: str, log: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "AGENTFSM_STEP_SLEEP": "0.1"}
    with log.open("w") as stderr:  # the child has its own copy of the file
        return subprocess.Popen(
            [sys.executable, "-m", "agents", "worker", "--agents",
             "tests.workers.work_agent:chain", "--store", url, "--name", name,
             "--heartbeat", "0.5", "--reclaim-after", "1.5", "--concurrency", "20"],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=stderr, text=True,
        )  # fmt: skip


async def started(store: RedisStore, ids: list[str]) -> None:
    """Until the fleet is at work: a run has a commit past its start."""
    give_up = time.monotonic() + 60
    while True:
        records = [await store.load(i) for i in ids]
        if any(r is not None and r.seq >= 1 for r in records):
            return
        assert time.monotonic() < give_up, "the workers did not start"
        await asyncio.sleep(0.05)


async def said_back(logs: list[Path]) -> None:
    """Until each worker has logged that the store is back (within its backoff cap)."""
    give_up = time.monotonic() + 60
    while not all("the store is back after" in log.read_text() for log in logs):
        assert time.monotonic() < give_up, [log.read_text()[-500:] for log in logs]
        await asyncio.sleep(0.1)


async def all_done(store: RedisStore, ids: list[str], within: float) -> None:
    give_up = time.monotonic() + within
    while True:
        records = [await store.load(i) for i in ids]
        if all(r is not None and r.status == "done" for r in records):
            return
        assert time.monotonic() < give_up, f"runs not done in {within} s: {records}"
        await asyncio.sleep(0.1)


@pytest.mark.redis
async def test_a_worker_fleet_rides_out_a_redis_outage(
    redis_factory: type[RedisServer], tmp_path: Path, full_size: bool
) -> None:
    outage = 30.0 if full_size else 12.0
    server = redis_factory(tmp_path / "aof", appendfsync="always").start()
    url = f"{server.url}?prefix=outage"
    store = RedisStore.from_url(url)
    before = [await chain.submit(store, Chain(), run_id=f"before{i}") for i in range(10)]
    logs = [tmp_path / f"w{i}.log" for i in range(3)]
    fleet = [worker(url, f"w{i}", logs[i]) for i in range(3)]
    try:
        await started(store, before)
        server.stop()
        down = time.monotonic()
        with pytest.raises(StoreUnavailable, match=r"cannot reach Redis at .* to create run"):
            await chain.submit(store, Chain(), run_id="during")
        while time.monotonic() - down < outage:
            assert [w.poll() for w in fleet] == [None] * len(fleet), "a worker exited"
            await asyncio.sleep(0.5)
        server.start()  # the same port and files: the AOF has every acknowledged commit
        after = [await chain.submit(store, Chain(), run_id=f"after{i}") for i in range(10)]
        during = await chain.submit(store, Chain(), run_id="during")  # submitted again
        await all_done(store, [*before, during, *after], within=120)
        assert [w.poll() for w in fleet] == [None] * len(fleet), "a worker exited"
        await said_back(logs)  # a worker may still be in its backoff pause: not stopped in it
        for run_id in [*before, during, *after]:
            history = await store.history(run_id)
            assert [e.seq for e in history] == list(range(STEPS + 1)), run_id
    finally:
        for w in fleet:
            if w.poll() is None:
                w.send_signal(signal.SIGTERM)
        codes = [w.wait(30) for w in fleet]
        await store.close()
    assert codes == [0] * len(fleet)
    for log in logs:  # each worker said it once when the store went, once when it came back
        text = log.read_text()
        assert text.count("the store is unavailable") == 1, text[-3000:]
        assert text.count("the store is back after") == 1, text[-3000:]


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A TCP server that accepts connections and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield listener.getsockname()[1]


async def test_a_silent_server_is_a_clear_error_not_a_hang(silent_port: int) -> None:
    store = RedisStore.from_url(f"redis://127.0.0.1:{silent_port}/0")
    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as caught:
        await store.load("anything")
    assert "accepted the connection but did not answer in time" in str(caught.value)
    assert time.monotonic() - started < 60  # generous: the bound (about 6 s) is in the docs
    await store.close()


def test_the_cli_against_a_silent_server_exits_2_with_a_clear_message(
    silent_port: int, tmp_path: Path
) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "agents", "runs", "--store", f"redis://127.0.0.1:{silent_port}/0"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    message = " ".join(done.stderr.split())
    assert re.search(r"d(oes|id) not answer", message) and f"127.0.0.1:{silent_port}" in message


@pytest.mark.redis
async def test_a_tls_url_against_a_plain_server_says_so(redis_server: RedisServer) -> None:
    store = RedisStore.from_url(f"rediss://127.0.0.1:{redis_server.port}/0")
    with pytest.raises(StoreUnavailable, match="may not speak TLS"):
        await store.load("anything")
    await store.close()
