"""`agentfsm` in real subprocesses: bad input is one line on stderr, exit code 2 and nothing
written; the happy paths print what a newcomer needs to see."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from agents.examples.data_analyst import Analysis, analyst
from storage import EmbeddedStore, Event, RunRecord

from ..upstream import ModelRefused, field_refused

ROOT = Path(__file__).resolve().parents[2]
ANALYST = "agents.examples.data_analyst:analyst"
SECRETS = ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "AGENTFSM_MODEL", "AGENTFSM_FAIL_AT")


def agentfsm(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`python -m agents ARGS` with no API key in sight, so only offline models can run."""
    clean = {k: v for k, v in os.environ.items() if k not in SECRETS and k != "AGENTFSM_STORE"}
    clean["PYTHONPATH"] = str(ROOT)
    return subprocess.run(
        [sys.executable, "-m", "agents", *args],
        cwd=cwd,
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


def stored(db: Path, run_id: str) -> tuple[list[RunRecord], RunRecord | None, list[Event]]:
    """Every run in the store file, the run `run_id`, and its history."""

    async def read() -> tuple[list[RunRecord], RunRecord | None, list[Event]]:
        store = EmbeddedStore(db)
        try:
            return (await store.list_runs(), await store.load(run_id), await store.history(run_id))
        finally:
            await store.close()

    return asyncio.run(read())


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """The single `agentfsm: error: ...` line of a refused command (exit code 2)."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("agentfsm: error: "), result.stderr
    assert result.stdout == "", result.stdout  # nothing was started, so nothing to report
    return lines[0]


# --- bad input ---------------------------------------------------------------------------------

RUN = ["run", ANALYST, "--run-id", "r1"]
BAD_INPUT: dict[str, tuple[list[str], list[str | ModelRefused]]] = {
    "unknown model": (
        ["demo", "--run-id", "r1", "--model", "nonsense:foo"],
        [ModelRefused("nonsense:foo")],
    ),
    "missing api key": (
        ["demo", "--run-id", "r1", "--model", "openai:gpt-4o-mini"],
        [ModelRefused("openai:gpt-4o-mini")],
    ),
    "run with a missing api key": (
        [*RUN, "--input", '{"dataset": [1]}', "--model", "openai:gpt-4o-mini"],
        [ModelRefused("openai:gpt-4o-mini")],
    ),
    "input not json": ([*RUN, "--input", "{dataset: [1]}"], ["--input is not JSON"]),
    "input not an object": ([*RUN, "--input", "[1, 2]"], ["JSON object", "not list"]),
    "empty dataset": (
        [*RUN, "--input", '{"dataset": []}'],
        [field_refused(Analysis, {"dataset": []})],
    ),
    "dataset not a list": (
        [*RUN, "--input", '{"dataset": "x"}'],
        [field_refused(Analysis, {"dataset": "x"})],
    ),
    "dataset missing": ([*RUN, "--input", "{}"], [field_refused(Analysis, {})]),
    "bad run id": (
        ["run", ANALYST, "--run-id", "no spaces", "--input", '{"dataset": [1]}'],
        ["invalid run id 'no spaces'"],
    ),
    "bad module": (
        ["run", "no_such_module.sub:agent", "--run-id", "r1", "--input", '{"dataset": [1]}'],
        ["cannot import module 'no_such_module.sub'"],
    ),
    "bad attribute": (
        ["run", "agents.examples.data_analyst:nobody", "--run-id", "r1", "--input", "{}"],
        ["module 'agents.examples.data_analyst' has no attribute 'nobody'"],
    ),
    "not an agent": (
        ["run", "agents.examples.data_analyst:calculate", "--run-id", "r1", "--input", "{}"],
        ["agents.examples.data_analyst:calculate is a function", "not an agents.Agent"],
    ),
    "no colon": (["run", "agents.examples", "--input", "{}"], ["is not MODULE:AGENT"]),
    "resume unknown run": (["resume", "r1"], ["no run with id 'r1'"]),
    "resume unknown run with an agent": (
        ["resume", "r1", "--agent", ANALYST, "--model", "nonsense:foo"],
        ["no run with id 'r1'"],
    ),
    "show unknown run": (["show", "r1"], ["no run with id 'r1'"]),
    "history unknown run": (["history", "r1"], ["no run with id 'r1'"]),
}


# Half the cases name the store with --store, half with $AGENTFSM_STORE.
VIA = dict(zip(BAD_INPUT, ["--store", "AGENTFSM_STORE"] * len(BAD_INPUT), strict=False))


@pytest.fixture(scope="module")
def refused(
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, tuple[subprocess.CompletedProcess[str], Path]]:
    """Every bad-input case's result and working directory. The cases run side by side:
    each start of the CLI costs about a second, most of it importing."""
    workdirs = {name: tmp_path_factory.mktemp("refused") for name in BAD_INPUT}

    def one(name: str) -> subprocess.CompletedProcess[str]:
        args, workdir = BAD_INPUT[name][0], workdirs[name]
        url = f"sqlite:///{workdir / 'store.db'}"
        if VIA[name] == "--store":
            return agentfsm(*args, "--store", url, cwd=workdir)
        return agentfsm(*args, cwd=workdir, env={"AGENTFSM_STORE": url})

    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        results = dict(zip(BAD_INPUT, pool.map(one, BAD_INPUT), strict=True))
    return {name: (results[name], workdirs[name]) for name in BAD_INPUT}


@pytest.mark.parametrize("case", [pytest.param(n, id=f"{n} ({VIA[n]})") for n in BAD_INPUT])
def test_bad_input_is_one_line_on_stderr_exit_2_and_nothing_is_written(
    case: str, refused: dict[str, tuple[subprocess.CompletedProcess[str], Path]]
) -> None:
    result, workdir = refused[case]
    line = one_line_error(result)
    for words in BAD_INPUT[case][1]:
        assert str(words) in line
    assert not (workdir / ".agentfsm").exists()  # the store named was the one used
    db = workdir / "store.db"
    if db.exists():
        runs, run, history = stored(db, "r1")
        assert (runs, run, history) == ([], None, [])


def test_an_agent_module_that_fails_to_import_is_a_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "broken_agent.py").write_text('raise RuntimeError("no config file found")\n')
    db = tmp_path / "store.db"
    result = agentfsm("run", "broken_agent:agent", "--input", "{}", "--store", f"sqlite:///{db}",
                      cwd=tmp_path)  # fmt: skip
    line = one_line_error(result)
    assert "broken_agent" in line and "no config file found" in line


def test_a_refused_resume_leaves_an_existing_run_untouched(tmp_path: Path) -> None:
    db = tmp_path / "store.db"

    async def create() -> None:
        store = EmbeddedStore(db)
        await analyst.start(store, Analysis(dataset=[1.0, 2.0]), run_id="kept")
        await store.close()

    asyncio.run(create())
    before = stored(db, "kept")
    for model in ("nonsense:foo", "openai:gpt-4o-mini"):
        result = agentfsm("resume", "kept", "--model", model, "--store", f"sqlite:///{db}",
                          cwd=tmp_path)  # fmt: skip
        assert model in one_line_error(result)
    after = stored(db, "kept")
    assert after == before  # same seq, no lease taken, no event
    assert after[1] is not None and (after[1].seq, after[1].holder) == (0, "")
