"""The `agentfsm` command as a newcomer uses it, in real subprocesses."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agents.examples.data_analyst import Analysis
from storage import EmbeddedStore, RedisStore, Store, open_store

from ..upstream import ModelRefused, field_refused

ROOT = Path(__file__).resolve().parents[2]


async def stored_deadline(url: str, run_id: str) -> float:
    store = open_store(url)
    try:
        record = await store.load(run_id)
    finally:
        await store.close()
    assert record is not None and record.deadline is not None, record
    return record.deadline


def agentfsm(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    clean = {
        k: v
        for k, v in os.environ.items()
        if k not in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "AGENTFSM_MODEL", "AGENTFSM_FAIL_AT")
    }
    clean["PYTHONPATH"] = str(ROOT)
    return subprocess.run(
        [sys.executable, "-m", "agents", *args], cwd=cwd, env={**clean, **(env or {})},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def requests_made(output: str) -> int:
    found = re.search(r"model requests made by this process: (\d+)", output)
    assert found, output
    return int(found.group(1))


async def _open(url: str) -> Store:
    return RedisStore.from_url(url) if url.startswith("redis") else open_store(url)


def test_a_failed_run_resumes_in_a_new_process_without_repaying_model_requests(
    store_url: str, tmp_path: Path
) -> None:
    run_id = f"walk-{tmp_path.name}"
    first = agentfsm("demo", "--fail-at", "detect", "--run-id", run_id, "--store", store_url,
                     cwd=tmp_path)  # fmt: skip
    assert first.returncode == 1, first.stderr
    assert "offline" in first.stdout
    assert requests_made(first.stdout) == 2  # plan, interpret
    assert f"agentfsm resume {run_id}" in first.stdout

    second = agentfsm("resume", run_id, "--store", store_url, cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert requests_made(second.stdout) == 1  # only the report

    async def committed() -> list[tuple[str, str]]:
        store = await _open(store_url)
        events = await store.history(run_id)
        await store.close()
        return [(e.trigger, e.kind) for e in events]

    assert asyncio.run(committed()) == [
        ("start", "start"), ("plan", "llm"), ("calculate", "tool"), ("interpret", "llm"),
        ("detect", "error"), ("retry", "control"), ("detect", "tool"), ("report", "llm"),
    ]  # fmt: skip


def test_demo_show_and_history_on_the_embedded_default(tmp_path: Path) -> None:
    demo = agentfsm("demo", "--run-id", "d1", cwd=tmp_path)
    assert demo.returncode == 0, demo.stderr
    assert "offline" in demo.stdout and "Anomalies flagged: 48.7" in demo.stdout
    assert (tmp_path / ".agentfsm" / "store.db").exists()
    assert "stored in sqlite:///.agentfsm/store.db (the default store); try next:" in demo.stdout
    for then in ("agentfsm history d1", "agentfsm show d1", "agentfsm demo --fail-at detect"):
        assert then in demo.stdout
    show = agentfsm("show", "d1", cwd=tmp_path)
    assert show.returncode == 0 and "status   done" in show.stdout and '"anomalies"' in show.stdout
    at_the_end = agentfsm("show", "d1", "--at", "5", cwd=tmp_path)
    memory = show.stdout[show.stdout.index("memory\n") :]
    assert at_the_end.stdout[at_the_end.stdout.index("memory\n") :] == memory  # same order
    history = agentfsm("history", "d1", cwd=tmp_path)
    assert history.returncode == 0
    for trigger in ("plan", "calculate", "interpret", "detect", "report"):
        assert trigger in history.stdout


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["demo", "--model", "nonsense:foo"], {}, ModelRefused("nonsense:foo")),
        (["demo", "--model", "openai:gpt-4o-mini"], {}, ModelRefused("openai:gpt-4o-mini")),
        (["run", "agents.examples.data_analyst:analyst", "--input", "{not json"], {},
         "--input is not JSON"),
        (["run", "agents.examples.data_analyst:analyst", "--input", '{"dataset": []}'], {},
         field_refused(Analysis, {"dataset": []})),
        (["run", "agents.examples.data_analyst:analyst", "--input", '{"dataset": "x"}'], {},
         field_refused(Analysis, {"dataset": "x"})),
        (["run", "no.such.module:agent", "--input", "{}"], {},
         "cannot import module 'no.such.module'"),
        (["run", "agents.examples.data_analyst:nobody", "--input", "{}"], {},
         "has no attribute 'nobody'"),
        (["run", "agents.examples.data_analyst:Analysis", "--input", "{}"], {},
         "is a ModelMetaclass, not an agents.Agent"),
        (["run", "nocolon", "--input", "{}"], {}, "'nocolon' is not MODULE:AGENT"),
        (["resume", "ghost"], {}, "no run with id 'ghost'"),
        (["show", "ghost"], {}, "no run with id 'ghost'"),
        (["history", "ghost"], {}, "no run with id 'ghost'"),
        (["why", "ghost", "plan"], {}, "no run with id 'ghost'"),
        (["show", "x", "--store", "mysql://u:pw@h/db"], {}, "unknown store URL"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line_exit_2_and_writes_nothing(
    args: list[str], env: dict[str, str], message: str | ModelRefused, tmp_path: Path
) -> None:
    db = tmp_path / "store.db"
    result = agentfsm(*args, cwd=tmp_path, env={"AGENTFSM_STORE": f"sqlite:///{db}", **env})
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("agentfsm: error: "), result.stderr
    assert str(message) in lines[0]
    assert "pw" not in result.stderr
    if db.exists():
        store = EmbeddedStore(db)
        assert asyncio.run(store.list_runs()) == []


def test_help_works_both_ways(tmp_path: Path) -> None:
    assert agentfsm("--help", cwd=tmp_path).returncode == 0
    script = Path(sys.executable).parent / "agentfsm"  # the console script this install made
    console = subprocess.run([script, "--help"], capture_output=True, text=True, check=False)
    assert console.returncode == 0 and "resume" in console.stdout


def test_waiting_run_takes_events_from_the_command_line(store_url: str, tmp_path: Path) -> None:
    run_id = f"ap-{tmp_path.name}"
    store = ("--store", store_url)
    started = agentfsm("run", "agents.examples.approval:approval", "--run-id", run_id,
                       "--input", '{"request": "refund"}', *store, cwd=tmp_path)  # fmt: skip
    assert started.returncode == 3, started.stderr  # waiting for a person
    waiting = agentfsm("runs", "--status", "waiting", *store, cwd=tmp_path)
    assert waiting.returncode == 0 and run_id in waiting.stdout
    refused = agentfsm("send", run_id, "review", "--data", '{"verdict": "maybe"}', *store,
                       cwd=tmp_path)  # fmt: skip
    assert refused.returncode == 2 and "fails its schema" in refused.stderr
    approved = agentfsm("send", run_id, "review", "--data", '{"verdict": "approve", "by": "ana"}',
                        *store, cwd=tmp_path)  # fmt: skip
    assert approved.returncode == 0, approved.stderr
    assert "done:" in approved.stdout
    listed = agentfsm("runs", "--status", "done", *store, cwd=tmp_path)
    assert listed.returncode == 0 and run_id in listed.stdout
    again = agentfsm("cancel", run_id, *store, cwd=tmp_path)
    assert again.returncode == 2 and "already done" in again.stderr


def test_a_due_timeout_is_fired_by_another_process(store_url: str, tmp_path: Path) -> None:
    store = ("--store", store_url)
    spec = "tests.agents.ticket_agent:ticket"
    run_id = f"tk-{tmp_path.name}"
    started = agentfsm("run", spec, "--run-id", run_id, "--input", "{}", *store, cwd=tmp_path)
    assert started.returncode == 3, started.stderr  # waiting for a reply
    deadline = asyncio.run(stored_deadline(store_url, run_id))
    early = agentfsm("timeouts", "--agent", spec, *store, cwd=tmp_path)
    assert early.returncode == 0, early.stderr
    if time.time() < deadline:  # on a busy machine the deadline may pass meanwhile
        assert "fired 0 due timeout(s)" in early.stdout
    listed = agentfsm("runs", "--status", "waiting", *store, cwd=tmp_path)
    if "fired 0 due timeout(s)" in early.stdout:  # still waiting
        row = next(line for line in listed.stdout.splitlines() if run_id in line)
        assert row.split()[-2:] != ["-", "-"]  # a deadline is shown
    time.sleep(max(deadline - time.time(), 0) + 0.05)  # until it is due: a deadline, not a race
    fired = agentfsm("timeouts", "--agent", spec, *store, cwd=tmp_path)
    assert fired.returncode == 0, fired.stderr
    if "fired 0 due timeout(s)" in early.stdout:
        assert f"{run_id}: ticket timed out" in fired.stdout and "fired 1" in fired.stdout
    shown = agentfsm("show", run_id, *store, cwd=tmp_path)
    assert "state    closed" in shown.stdout and '"escalated": true' in shown.stdout
    late = agentfsm("send", run_id, "reply", "--data", '"too late"', "--agent", spec, *store,
                    cwd=tmp_path)  # fmt: skip
    assert late.returncode == 2 and "does not accept event 'reply'" in late.stderr


def test_why_and_show_at_travel_back_in_time(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'demo.db'}"
    assert agentfsm("demo", "--run-id", "w1", "--store", url, cwd=tmp_path).returncode == 0
    why = agentfsm("why", "w1", "plan", "--store", url, cwd=tmp_path)
    assert why.returncode == 0, why.stderr
    lines = why.stdout.splitlines()
    assert lines[0].startswith('plan = "1. Compute summary statistics') and "(at seq 5)" in lines[0]
    assert "written by seq 1: 'plan' [llm offline:analyst] new -> planned" in lines[1]
    assert "before that seq 0: creation of the run [start] -> new" in lines[2]
    then = agentfsm("show", "w1", "--at", "2", "--store", url, cwd=tmp_path)
    assert then.returncode == 0, then.stderr
    assert "state    computed" in then.stdout and "seq      2 (of 5)" in then.stdout
    assert '"interpretation": ""' in then.stdout and '"mean": 15.72' in then.stdout
    for args, message in [
        (["why", "w1", "plna"], "unknown memory field 'plna': the run's fields are anomalies"),
        (["show", "w1", "--at", "6"], "seq 6 is out of range: the events cover seqs 0..5"),
    ]:
        bad = agentfsm(*args, "--store", url, cwd=tmp_path)
        assert bad.returncode == 2 and message in bad.stderr, bad.stderr


def test_runs_are_queried_by_state_and_time_and_the_store_kept_tidy(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'q.db'}"
    store = ("--store", url)
    assert agentfsm("demo", "--run-id", "q1", *store, cwd=tmp_path).returncode == 0
    failed = agentfsm("demo", "--run-id", "q2", "--fail-at", "detect", *store, cwd=tmp_path)
    assert failed.returncode == 1

    def listed(*args: str) -> list[str]:
        result = agentfsm("runs", *args, *store, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        return [line.split()[0] for line in result.stdout.splitlines()[1:] if line.strip()]

    assert listed() == ["q2", "q1"]
    assert listed("--state", "interpreted") == ["q2"]
    assert listed("--since", "1h") == ["q2", "q1"]
    assert listed("--until", "2000-01-01") == []
    assert listed("--status", "done", "--since", "2000-01-01T00:00") == ["q1"]
    bad = agentfsm("runs", "--since", "yesterday", *store, cwd=tmp_path)
    assert bad.returncode == 2 and "'yesterday' is not a time" in bad.stderr
    assert "removed 0" in agentfsm("gc", *store, cwd=tmp_path).stdout
    assert "indexed 2 run(s)" in agentfsm("reindex", *store, cwd=tmp_path).stdout


def test_two_processes_sending_the_same_event_at_once_commit_it_once(
    store_url: str, tmp_path: Path
) -> None:
    run_id = f"race-{tmp_path.name}"
    store = ("--store", store_url)
    started = agentfsm("run", "agents.examples.approval:approval", "--run-id", run_id,
                       "--input", '{"request": "refund"}', *store, cwd=tmp_path)  # fmt: skip
    assert started.returncode == 3, started.stderr
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("OPENAI_API_KEY", None)
    env.pop("ANTHROPIC_API_KEY", None)
    senders = [
        subprocess.Popen(
            [sys.executable, "-m", "agents", "send", run_id, "review", "--data",
             f'{{"verdict": "approve", "by": "person{i}"}}', *store],
            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for i in range(2)
    ]  # fmt: skip
    results = [(s.wait(60), *s.communicate()) for s in senders]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 2], results
    refused = next(err for code, _, err in results if code == 2)
    assert "does not accept event 'review'" in refused or "moved" in refused, refused
    history = agentfsm("history", run_id, *store, cwd=tmp_path)
    rows = [line.split() for line in history.stdout.splitlines()[1:] if line.strip()]
    assert [r[1] for r in rows].count("review") == 1
