"""Split brain: many processes drive one run at once, and a holder that wakes up too late.

Children are `python -m tests.faults.fault_agent` (see there for the side-effect log).
"""

from __future__ import annotations

import asyncio
import itertools
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import redis

from storage import Event, RedisStore

from ..keys import plain
from ..redis_server import RedisServer
from .fault_agent import EXIT_TAKEN_OVER

pytestmark = pytest.mark.redis

ROOT = Path(__file__).resolve().parents[2]


def child(*args: str, stdin: bool = False) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.faults.fault_agent", *args],
        cwd=ROOT,
        stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def read_log(log: Path) -> list[tuple[str, int, float, float]]:
    """(idempotency key, pid, started, ended) of each step execution, in log order."""
    rows = []
    for line in log.read_text().splitlines():
        key, pid, started, ended = line.split("\t")
        rows.append((plain(key), int(pid), float(started), float(ended)))
    return rows


def tally(line: str) -> dict[str, int]:
    """{"commits": N, "locked": N, "taken": N} from a `share` child's last line."""
    words = line.split()
    return {name: int(n) for name, n in zip(words[::2], words[1::2], strict=True)}


def check_history(history: list[Event], run_id: str, steps: int) -> None:
    """Gap-free, each seq and each key once, each step once, in order."""
    assert [e.seq for e in history] == list(range(steps + 1))
    assert [e.trigger for e in history[1:]] == [f"t{i}" for i in range(steps)]
    keys = [e.key for e in history[1:]]
    assert [plain(k) for k in keys] == [f"{run_id}:{i}:t{i}" for i in range(steps)]
    assert all(e.kind == "tool" for e in history[1:])
    # One advances at a time: each step started after the previous one was committed.
    for before, after in itertools.pairwise(history[1:]):
        assert after.started_at >= before.ended_at, (before, after)


CONTENDERS = 8
SHARED_STEPS = 24
SHARED_TTL = 0.5


async def test_eight_processes_drive_one_run(
    redis_server: RedisServer, tmp_path: Path, prefix: str
) -> None:
    """8 processes start together, each taking the lease for 2 steps at a time, until done."""
    log = tmp_path / "effects.log"
    run_id = "contended"
    args = ["share", redis_server.url, prefix, run_id, str(log)]
    procs = [
        child(*args, str(SHARED_STEPS), str(SHARED_TTL), "2", stdin=True) for _ in range(CONTENDERS)
    ]

    def go() -> list[str]:
        for p in procs:
            assert p.stdout is not None
            assert p.stdout.readline() == "ready\n", p.communicate()[1][-3000:]
        for p in procs:  # release them together
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        outputs = []
        for p in procs:
            out, err = p.communicate(timeout=40)
            assert p.returncode == 0, err[-3000:]
            outputs.append(out.strip())
        return outputs

    outputs = await asyncio.to_thread(go)
    tallies = [tally(line) for line in outputs]

    store = RedisStore.from_url(redis_server.url, prefix=prefix)
    try:
        record = await store.load(run_id)
        assert record is not None
        assert (record.status, record.seq) == ("done", SHARED_STEPS)
        assert record.memory["done"] == [f"t{i}" for i in range(SHARED_STEPS)]
        assert record.holder == ""  # the last one gave the lease back
        history = await store.history(run_id)
    finally:
        await store.close()
    check_history(history, run_id, SHARED_STEPS)

    workers = Counter(e.worker for e in history[1:])
    assert sum(t["commits"] for t in tallies) == SHARED_STEPS  # each process counted its own
    assert len(workers) >= 2, "the lease should have passed between processes"

    runs = read_log(log)
    executions = Counter(key for key, *_ in runs)
    committed = {plain(e.key) for e in history[1:]}
    assert set(executions) == committed  # nothing ran past a commit it did not make
    # A step runs again only when its first runner lost the lease while running it.
    extra = sum(n - 1 for n in executions.values())
    assert extra <= sum(t["taken"] for t in tallies)
    print(
        f"\nsplit brain: {CONTENDERS} processes, {len(workers)} committed, tallies {tallies},"
        f" extra executions {extra}"
    )


HOLD_STEPS = 10
HOLD_TTL = 0.4


def lease_expired(url: str, prefix: str, run_id: str) -> None:
    """Until the run's lease key is gone from Redis (the layout of `RedisStore.key`)."""
    client = redis.Redis.from_url(url)
    key = f"{prefix}:{{{run_id}}}:lease"
    give_up = time.monotonic() + 60
    try:
        while client.exists(key):
            assert time.monotonic() < give_up, f"{key} did not expire in 60 s"
            time.sleep(0.01)
    finally:
        client.close()


def stop_in_step(
    url: str, prefix: str, run_id: str, log: Path, taker_pause: str
) -> tuple[int, str]:
    """Stop a holder with SIGSTOP inside step t3, past its lease; start a taker that pauses in
    `taker_pause`; once the taker is there, wake the holder with SIGCONT and let it finish
    (or be refused); then let the taker finish.

    Returns the holder's exit code and stdout.
    """
    common = [url, prefix, run_id, str(log), str(HOLD_STEPS), str(HOLD_TTL)]
    holder = child("hold", *common, "t3", stdin=True)
    taker: subprocess.Popen[str] | None = None
    try:
        assert holder.stdout is not None and holder.stdin is not None
        assert holder.stdout.readline() == "in t3\n", holder.communicate()[1][-3000:]
        holder.send_signal(signal.SIGSTOP)
        lease_expired(url, prefix, run_id)  # nobody renews it
        taker = child("hold", *common, taker_pause, stdin=True)
        assert taker.stdout is not None and taker.stdin is not None
        line = taker.stdout.readline()
        assert line == f"in {taker_pause}\n", taker.communicate()[1][-3000:]
        holder.send_signal(signal.SIGCONT)
        h_out, h_err = holder.communicate("go\n", timeout=30)
        assert holder.returncode in (0, EXIT_TAKEN_OVER), h_err[-3000:]
        _, t_err = taker.communicate("go\n", timeout=30)
        assert taker.returncode == 0, t_err[-3000:]
        return holder.returncode, h_out
    finally:
        for p in (holder, taker):
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGCONT)
                p.kill()
                p.communicate()


async def check_takeover(
    url: str, prefix: str, run_id: str, log: Path, holder_pid_steps: int
) -> list[tuple[str, int, float, float]]:
    store = RedisStore.from_url(url, prefix=prefix)
    try:
        record = await store.load(run_id)
        assert record is not None
        assert (record.status, record.seq) == ("done", HOLD_STEPS)
        assert record.crashes == 0
        history = await store.history(run_id)
    finally:
        await store.close()
    check_history(history, run_id, HOLD_STEPS)
    workers = [e.worker for e in history[1:]]
    # The holder committed t0..t2; everything from t3 on is the taker's.
    assert len(set(workers[:holder_pid_steps])) == 1
    assert set(workers[holder_pid_steps:]) == {workers[-1]} != {workers[0]}
    assert history[4].attempt == 2  # the taker counted the stopped holder as crashed in t3
    return read_log(log)


async def test_stopped_holder_is_refused_after_takeover(
    redis_server: RedisServer, tmp_path: Path, prefix: str
) -> None:
    """The taker holds the run (inside t3) when the stopped holder wakes and commits t3: the
    fencing token refuses it (`LeaseLost` -> `RunTakenOver`) and it exits without writing."""
    log = tmp_path / "effects.log"
    h_code, h_out = await asyncio.to_thread(
        stop_in_step, redis_server.url, prefix, "fenced", log, "t3"
    )
    assert h_code == EXIT_TAKEN_OVER, h_out
    assert "commit of 't3' at seq 4 refused" in h_out
    runs = await check_takeover(redis_server.url, prefix, "fenced", log, 3)
    holder_pid = runs[0][1]
    holder_keys = [key for key, pid, *_ in runs if pid == holder_pid]
    assert holder_keys == [f"fenced:{i}:t{i}" for i in range(4)]  # it ran t3, wrote nothing
    assert Counter(key for key, *_ in runs)["fenced:3:t3"] == 2  # the one step in flight


async def test_stopped_holder_stops_when_its_step_was_committed_by_the_taker(
    redis_server: RedisServer, tmp_path: Path, prefix: str
) -> None:
    """The taker already committed t3..t5 and is inside t6 when the stopped holder wakes:
    the holder's commit of t3 must be refused too, and it must not run t6."""
    log = tmp_path / "effects.log"
    h_code, h_out = await asyncio.to_thread(
        stop_in_step, redis_server.url, prefix, "dup-fenced", log, "t6"
    )
    runs = await check_takeover(redis_server.url, prefix, "dup-fenced", log, 3)
    holder_pid = runs[0][1]
    holder_keys = [key for key, pid, *_ in runs if pid == holder_pid]
    assert holder_keys == [f"dup-fenced:{i}:t{i}" for i in range(4)], h_out
    assert h_code == EXIT_TAKEN_OVER, h_out
