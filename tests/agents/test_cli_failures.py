"""Failures explain themselves where the user looks (`run.error`, `show`, `history`, the report),
everything a run stored is printed as text, and a store that does not answer is named at once
with the way out."""

from __future__ import annotations

import asyncio
import os
import pty
import socket
import subprocess
import sys
from collections.abc import Iterator
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

from agents.cli import main
from storage import EmbeddedStore, RunRecord, open_store

from .hostile_agent import HOSTILE, hostile
from .test_cli import agentfsm

ROOT = Path(__file__).resolve().parents[2]
RAW = ("\x1b", "\x07", "\x9b")
"""Control characters the hostile message holds, which must never reach the terminal raw."""
SHOWN = "\\x1b]0;pwned\\x07\\x1b[2J[/][bold red]boom\\x9b31m\\nsecond line"
"""The hostile message as the CLI prints it: on one line, escapes visible, markup as text."""


def no_raw_control(*outputs: str) -> None:
    for text in outputs:
        assert not any(c in text for c in RAW), repr(text)


async def test_until_done_tells_why_a_run_failed() -> None:
    store = open_store("memory://")
    try:
        run = await hostile.start(store, {}, run_id="h1")
        assert run.error is None
        await run.until_done()
        assert run.status == "failed" and run.error is not None
        assert run.error["type"] == "RuntimeError" and run.error["message"] == HOSTILE
        assert (run.error["trigger"], run.error["seq"], run.error["attempt"]) == ("explode", 1, 1)
        again = await hostile.start(store, {}, run_id="h1")  # the stored failed run
        await again.until_done()
        assert again.error == run.error
    finally:
        await store.close()


def test_a_failed_run_says_which_step_failed_and_why_wherever_one_looks(tmp_path: Path) -> None:
    store = ("--store", f"sqlite:///{tmp_path / 'store.db'}")
    spec = "tests.agents.hostile_agent:hostile"
    ran = agentfsm("run", spec, "--run-id", "h1", "--input", "{}", *store, cwd=tmp_path)
    assert ran.returncode == 1, ran.stderr
    assert f"step 'explode' failed after 1 attempt(s): RuntimeError: {SHOWN}" in ran.stderr
    assert SHOWN in ran.stdout  # on the step's own line
    retry = "retry it from there with: agentfsm retry h1 --agent tests.agents.hostile_agent:hostile"
    assert retry in ran.stderr
    again = agentfsm("run", spec, "--run-id", "h1", "--input", "{}", *store, cwd=tmp_path)
    assert again.returncode == 1
    assert "it had failed before: nothing runs now" in again.stdout and retry in again.stderr

    show = agentfsm("show", "h1", *store, cwd=tmp_path)
    assert show.returncode == 0, show.stderr
    assert f"error    step 'explode' (seq 1, attempt 1): RuntimeError: {SHOWN}" in show.stdout
    assert "retry    agentfsm retry h1  (from new)" in show.stdout

    history = agentfsm("history", "h1", *store, cwd=tmp_path)
    assert history.returncode == 0, history.stderr
    assert f"  seq 1 explode, attempt 1: RuntimeError: {SHOWN}\n" in history.stdout

    runs = agentfsm("runs", *store, cwd=tmp_path)
    assert runs.returncode == 0 and "h1" in runs.stdout and "failed" in runs.stdout

    page = tmp_path / "h1.html"
    report = agentfsm("report", "h1", "--agent", spec, "-o", str(page), *store, cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    html = page.read_text()
    failure = html.index('<p class="failure">✗ step <b>explode</b> failed')
    assert failure < html.index("<h2>Graph</h2>")  # the first thing the report says
    assert "RuntimeError: \x1b]0;pwned\x07\x1b[2J[/][bold red]boom" in html[failure:]  # as text
    no_raw_control(ran.stdout, ran.stderr, show.stdout, history.stdout, runs.stdout)


def test_what_a_run_stored_is_printed_as_text(tmp_path: Path) -> None:
    db = tmp_path / "store.db"
    evil = "evil[/]name"

    async def create() -> None:
        store = EmbeddedStore(db)
        try:
            await store.create(RunRecord(
                run_id="e1", agent=evil, version=1, state="new", seq=0, status="running",
                memory={"note": "[/][bold]\x1b[31mred"}, created_at=1.0, updated_at=1.0,
            ))  # fmt: skip
        finally:
            await store.close()

    asyncio.run(create())
    store = ("--store", f"sqlite:///{db}")
    runs = agentfsm("runs", *store, cwd=tmp_path)
    assert runs.returncode == 0, runs.stderr
    assert f"e1   {evil} v1" in runs.stdout
    show = agentfsm("show", "e1", *store, cwd=tmp_path)
    assert show.returncode == 0, show.stderr
    assert f"agent    {evil} v1" in show.stdout
    assert '"note": "[/][bold]\\u001b[31mred"' in show.stdout
    listed = agentfsm("runs", "--agent", evil, *store, cwd=tmp_path)
    assert listed.returncode == 0 and evil in listed.stdout
    no_raw_control(runs.stdout, show.stdout)


# --- stores that do not answer -------------------------------------------------------------


@pytest.fixture
def refused_url() -> str:
    """A loopback port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"redis://127.0.0.1:{s.getsockname()[1]}/0"


@pytest.fixture
def silent_url() -> Iterator[str]:
    """A server that accepts connections and never says a word."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield f"redis://127.0.0.1:{s.getsockname()[1]}/0"


COMMANDS = {
    "workers": ["workers"],
    "worker": ["worker", "--agents", "agents.examples.data_analyst:analyst"],
    "submit": ["submit", "agents.examples.data_analyst:analyst", "--input", '{"dataset": [1]}'],
    "runs": ["runs"],
}


@pytest.mark.parametrize("server", ["refused", "silent"])
@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_store_that_does_not_answer_is_named_with_the_way_out(
    server: str, command: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    url = request.getfixturevalue(f"{server}_url")
    done = agentfsm(*COMMANDS[command], cwd=tmp_path, env={"AGENTFSM_STORE": url})
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stdout == ""  # nothing before it: no "serving" line, no table
    [line] = done.stderr.strip().splitlines()
    assert f"the store {url} (from $AGENTFSM_STORE) does not answer" in line
    why = "no answer within 2 s" if server == "silent" else "connection refused: nothing listens"
    assert why in line
    assert "start it (for example `redis-server`)" in line and "AGENTFSM_STORE" in line


# --- pydantic-ai's banner --------------------------------------------------------------------


def in_a_terminal(*args: str, cwd: Path) -> str:
    """What `python ARGS` prints on a terminal (a pty), as a person at a prompt sees it,
    outside CI and pytest (pydantic-ai shows its first-run banner only there)."""
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "PYTEST_VERSION")}
    env.update(PYTHONPATH=str(ROOT), TERM="xterm", COLUMNS="120")
    for key in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "AGENTFSM_MODEL", "PYDANTIC_AI_NO_BANNER"):
        env.pop(key, None)
    leader, follower = pty.openpty()
    child = subprocess.Popen([sys.executable, *args], cwd=cwd, env=env, stdin=follower,
                             stdout=follower, stderr=follower)  # fmt: skip
    os.close(follower)
    seen = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    child.wait(60)
    os.close(leader)
    return seen.decode(errors="replace")


def test_pydantic_ais_banner_stays_out_of_the_demo(tmp_path: Path) -> None:
    plain = "from pydantic_ai import Agent; Agent('test').run_sync('hi')"
    assert "observability: off" in in_a_terminal("-c", plain, cwd=tmp_path)  # what we hide
    demo = in_a_terminal("-m", "agents", "demo", "--store", "memory://", cwd=tmp_path)
    assert "model: offline:analyst" in demo and "done: " in demo
    assert "observability" not in demo and "Logfire" not in demo


# --- the queues, with no worker --------------------------------------------------------------


def test_workers_shows_the_queues_when_no_worker_is_alive(redis_url: str, prefix: str,
                                                          tmp_path: Path) -> None:  # fmt: skip
    store = ("--store", f"{redis_url}?prefix={prefix}")
    spec = "agents.examples.data_analyst:analyst"
    for _ in range(2):
        queued = agentfsm("submit", spec, "--input", '{"dataset": [1, 2]}', *store, cwd=tmp_path)
        assert queued.returncode == 0, queued.stderr
    listed = agentfsm("workers", *store, cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0] == "no workers have signed on to this store"
    assert "data_analyst: 2 queued, 0 in hand" in lines[1]
    assert "2 run(s) wait for a worker: start one with `agentfsm worker" in lines[2]


# --- DurableAgent runs -----------------------------------------------------------------------


@pytest.fixture
def durable_run(tmp_path: Path) -> list[str]:
    """A finished run of the durable example, stored in an embedded store file."""
    url = f"sqlite:///{tmp_path / 'store.db'}"
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY")}
    done = subprocess.run(
        [sys.executable, "-m", "agents.examples.durable_analyst", "3", "4", "97",
         "--run-id", "analysis-1", "--store", url],
        cwd=tmp_path, env={**env, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return ["--store", url]


def test_a_durable_agents_run_is_reported_by_the_cli(
    durable_run: list[str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("agents.cli._agents.entry_points", lambda group: [])  # none registered
    unknown = tmp_path / "unknown.html"
    assert main(["report", "analysis-1", "-o", str(unknown), *durable_run]) == 0
    assert "without its graph: the run's agent is not registered" in capsys.readouterr().out
    assert "is not known where this report was written" in unknown.read_text()
    assert "model_request" in unknown.read_text()  # the timeline, the steps: all but the graph
    (tmp_path / "durable_mod.py").write_text(
        "from agents import DurableAgent\nfrom agents.examples.durable_analyst import analyst\n"
        "from storage import open_store\n"
        "durable = DurableAgent(analyst, store=open_store('memory://'))\n"
    )
    sys.path.insert(0, str(tmp_path))
    try:
        for spec in ("agents.examples.durable_analyst:analyst", "durable_mod:durable"):
            page = tmp_path / f"{spec.replace(':', '-')}.html"
            args = ["report", "analysis-1", "--agent", spec, "-o", str(page), *durable_run]
            assert main(args) == 0
            drawn = page.read_text()
            assert "analysis-1" in drawn and "model_request" in drawn and "not known" not in drawn
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("durable_mod", None)


def test_a_durable_agents_run_is_found_by_its_registered_name(
    durable_run: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registered = [EntryPoint("durable_analyst", "agents.examples.durable_analyst:analyst",
                             "agentfsm.agents")]  # fmt: skip
    monkeypatch.setattr("agents.cli._agents.entry_points", lambda group: registered)
    page = tmp_path / "r.html"
    assert main(["report", "analysis-1", "-o", str(page), *durable_run]) == 0
    assert "durable_analyst" in page.read_text()
    assert main(["show", "analysis-1", *durable_run]) == 0
