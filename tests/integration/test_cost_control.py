"""The usage ledger and budgets across SIGKILL and across processes (real Redis, embedded).

The children are `tests.integration.cost_agent`; their offline model logs every call's start
and end to calls.log, which is what a provider would bill.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from storage import Event, RunRecord, Store, open_store

from .cost_agent import BUDGET, SCOPE_BUDGET

ROOT = Path(__file__).resolve().parents[2]


def _child(*args: str, stdin: int | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.integration.cost_agent", *args], cwd=ROOT,
        stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip


def _finish(child: subprocess.Popen[bytes], timeout: float = 120) -> str:
    try:
        out, err = child.communicate(timeout=timeout)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 0, err.decode()[-3000:]
    return out.decode().strip()


def _kill_when_blocked(child: subprocess.Popen[bytes], workdir: Path) -> None:
    """SIGKILL `child` once its model is inside its third request (the readiness file)."""
    deadline = time.monotonic() + 60
    try:
        while not (workdir / "blocked").exists():
            assert child.poll() is None, child.communicate()[1].decode()[-3000:]
            assert time.monotonic() < deadline, "the child never reached its third request"
            time.sleep(0.02)
    finally:
        child.send_signal(signal.SIGKILL)
        child.communicate()


def _calls(workdir: Path) -> Counter[str]:
    return Counter(line.split()[0] for line in (workdir / "calls.log").read_text().splitlines())


async def _read(url: str, run_id: str) -> tuple[RunRecord, list[Event]]:
    store = open_store(url)
    try:
        record = await store.load(run_id)
        assert record is not None
        return record, await store.history(run_id)
    finally:
        await store.close()


def _summed(events: list[Event]) -> dict[str, int]:
    total: Counter[str] = Counter()
    for e in events:
        total.update({k: v for k, v in (e.usage or {}).items() if v})
    return dict(total)


async def test_a_kill_inside_the_third_llm_step_leaves_the_ledger_equal_to_the_events(
    store_url: str, tmp_path: Path
) -> None:
    run_id = f"ledger-{tmp_path.name}"
    first = _child(store_url, str(tmp_path), "ledger", run_id, "block")
    await asyncio.to_thread(_kill_when_blocked, first, tmp_path)
    record, events = await _read(store_url, run_id)
    assert record.usage == _summed(events)  # after the crash, before any resume
    assert record.usage["requests"] == 2
    assert await asyncio.to_thread(_finish, _child(store_url, str(tmp_path), "ledger",
                                                   run_id, "normal")) == "done done"  # fmt: skip
    record, events = await _read(store_url, run_id)
    assert record.usage == _summed(events)
    calls = _calls(tmp_path)
    # Five requests started; the killed one never answered and was never recorded: the
    # ledger counts the four that were, each once (one event per llm trigger).
    assert (calls["start"], calls["end"]) == (5, 4)
    assert record.usage["requests"] == calls["end"] == 4
    assert record.usage["cache_read_tokens"] == 4
    llm_events = [e for e in events if e.kind == "llm"]
    assert sorted(e.trigger for e in llm_events) == ["ask1", "ask2", "ask3", "ask4"]
    assert all((e.usage or {}).get("requests") == 1 for e in llm_events)


async def test_a_run_budget_stops_at_exactly_n_requests_across_a_crash_and_a_raise_finishes_it(
    store_url: str, tmp_path: Path
) -> None:
    run_id = f"budget-{tmp_path.name}"
    first = _child(store_url, str(tmp_path), "budget", run_id, "block")
    await asyncio.to_thread(_kill_when_blocked, first, tmp_path)
    resumed = _child(store_url, str(tmp_path), "budget", run_id, "normal")
    assert await asyncio.to_thread(_finish, resumed) == "waiting s3"  # parked where it stopped
    record, events = await _read(store_url, run_id)
    assert record.usage["requests"] == BUDGET == _calls(tmp_path)["end"]
    halt = events[-1]
    assert halt.kind == "halt" and halt.trigger == "ask4" and halt.status == "waiting"
    assert halt.output == {
        "budget": "run", "name": run_id, "limits": {"requests": BUDGET},
        "used": {"requests": BUDGET},
    }  # fmt: skip
    cli = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "agents", "budget", run_id, "--requests", str(BUDGET + 2),
         "--agent", "tests.integration.cost_agent:budgeted", "--store", store_url],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT), "COST_WORKDIR": str(tmp_path)},
    )  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    assert f"sent on: {run_id}" in cli.stdout and "requests 5" in cli.stdout
    done = _child(store_url, str(tmp_path), "budget", run_id, "normal")
    assert await asyncio.to_thread(_finish, done) == "done done"
    record, events = await _read(store_url, run_id)
    assert record.usage["requests"] == 5 == _calls(tmp_path)["end"]
    assert record.usage == _summed(events)


async def test_a_scope_budget_of_10_shared_by_8_runs_in_2_processes_pays_exactly_10(
    store_url: str, tmp_path: Path
) -> None:
    """Each run wants 2 requests (16 in all); admission reserves the request in the scope's
    ledger atomically (`Ledger.reserve`), so no two processes both take the last room, and
    each commit's charge gives its reservation back (else later runs would be refused)."""
    await _shared_scope_budget(store_url, tmp_path)


async def test_a_scope_budget_shared_by_two_processes_pays_exactly_10_on_postgres(
    postgres_url: str, tmp_path: Path
) -> None:
    await _shared_scope_budget(postgres_url, tmp_path)


async def _shared_scope_budget(store_url: str, tmp_path: Path) -> None:
    tenant = f"t-{tmp_path.name}"[:60]
    children = [
        _child(store_url, str(tmp_path), "scope", tenant, str(first), "4", stdin=subprocess.PIPE)
        for first in (0, 4)
    ]
    try:
        for c in children:  # both have started their runs: go together
            assert c.stdout is not None and c.stdout.readline().strip() == b"ready"
        for c in children:
            assert c.stdin is not None
            c.stdin.write(b"go\n")
            c.stdin.flush()  # communicate() closes it
        outs = [await asyncio.to_thread(_finish, c) for c in children]
    finally:
        for c in children:
            if c.poll() is None:
                c.kill()
    statuses = Counter(" ".join(outs).split())
    assert set(statuses) <= {"done", "waiting"} and statuses["waiting"] > 0
    store: Store = open_store(store_url)
    try:
        runs = [await store.load(f"{tenant}-{i}") for i in range(8)]
        from agents.spending._budget import period_of

        scope = await store.ledger.scope_usage(tenant, period_of("day", time.time()))
    finally:
        await store.close()
    paid = sum(r.usage.get("requests", 0) for r in runs if r is not None)
    print(f"scope budget {SCOPE_BUDGET}: paid {paid}")
    assert scope["requests"] == paid == _calls(tmp_path)["end"]  # each charge once
    assert paid == SCOPE_BUDGET


async def test_a_kill_right_after_a_final_commit_loses_no_scope_charge(
    store_url: str, tmp_path: Path
) -> None:
    """The charge is part of the commit (embedded, standalone Redis): a process killed
    between a run's final commit and anything after it leaves the scope's ledger equal to
    the sum of the runs' usage, with nothing picked up afterwards."""
    tenant = f"k-{tmp_path.name}"[:60]
    child = _child(store_url, str(tmp_path), "final", tenant, "4")
    try:
        _, err = await asyncio.to_thread(child.communicate, timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == -signal.SIGKILL, err.decode()[-3000:]
    killed = (tmp_path / "committed").read_text()
    from agents.spending._budget import period_of

    store: Store = open_store(store_url)
    try:
        runs = [await store.load(f"{tenant}-{i}") for i in range(4)]
        scope = await store.ledger.scope_usage(tenant, period_of("day", time.time()))
    finally:
        await store.close()
    assert all(r is not None for r in runs)
    by_id = {r.run_id: r for r in runs if r is not None}
    assert by_id[killed].status == "done" and by_id[killed].usage["requests"] == 3
    summed: Counter[str] = Counter()
    for r in by_id.values():
        summed.update(r.usage)
    assert scope == dict(summed)  # the killed run's last charge too, each charge once
    assert scope["requests"] <= _calls(tmp_path)["end"]  # answered, not all committed
