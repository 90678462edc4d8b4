"""`agentfsm` answers at once: `--help` and `runs` import no pydantic-ai; every command has its
help; bad options are usage errors (exit code 2) quoted back without control characters."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import get_args

import pytest

import agents
from agents.cli import commands, main
from agents.cli.inspecting import STATUSES
from storage import RunStatus

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import json, sys
from agents.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
heavy = sorted(m for m in ("pydantic_ai", "openai", "anthropic", "redis") if m in sys.modules)
print(json.dumps({"code": code, "loaded": heavy}))
"""


def probe(*args: str, cwd: Path) -> dict[str, object]:
    """`main(args)` in a fresh interpreter: its exit code and which heavy modules it loaded."""
    env = {k: v for k, v in os.environ.items() if k != "AGENTFSM_STORE"}
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *args], cwd=cwd, env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    found: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    found["stdout"] = "\n".join(done.stdout.strip().splitlines()[:-1])
    return found


def test_help_imports_no_pydantic_ai(tmp_path: Path) -> None:
    found = probe("--help", cwd=tmp_path)
    assert found["code"] == 0 and "resume" in str(found["stdout"])
    assert found["loaded"] == []


def test_runs_on_the_embedded_store_imports_neither_pydantic_ai_nor_redis(tmp_path: Path) -> None:
    found = probe("runs", "--store", f"sqlite:///{tmp_path / 's.db'}", cwd=tmp_path)
    assert found["code"] == 0 and found["stdout"] == "no runs in this store yet"
    assert "pydantic_ai" not in str(found["loaded"])  # (redis: statemachine may import it today)


@pytest.mark.parametrize("name", [c.name for c in commands()])
def test_every_command_has_its_help_with_the_store_option(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main([name, "--help"])
    assert exited.value.code == 0
    shown = capsys.readouterr().out
    assert "--store" in shown
    codes = shown[shown.index("exit codes:") :].split()  # the help ends with its exit codes
    assert {"0", "2"} <= set(codes)
    if name in ("run", "demo", "resume", "send", "retry", "approve", "watch"):
        assert {"1", "3"} <= set(codes)  # how the run stands


def test_the_commands_are_grouped_and_named_once() -> None:
    names = [c.name for c in commands()]
    assert len(names) == len(set(names)) == 25


def test_the_status_choices_are_the_stores_statuses() -> None:
    assert list(get_args(RunStatus)) == STATUSES


def test_the_agents_package_imports_every_public_name_on_demand() -> None:
    for name in agents.__all__:
        assert getattr(agents, name).__module__ == "agents"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["runs", "--limit", "-5"], "argument --limit: -5 is less than 1"),
        (["runs", "--limit", "0"], "argument --limit: 0 is less than 1"),
        (["runs", "--limit", "many"], "argument --limit: 'many' is not a number"),
        (["show", "r1", "--at", "-1"], "argument --at: -1 is less than 0"),
        (["why", "r1", "plan", "--at", "-2"], "argument --at: -2 is less than 0"),
        (["fork", "r1", "--at", "-3"], "argument --at: -3 is less than 0"),
        (["resume", "r1", "--wait", "-1"], "argument --wait: -1 is less than 0.0"),
        (["worker", "--agents", "m:a", "--concurrency", "0"], "argument --concurrency: 0 is"),
        (["worker", "--agents", "m:a", "--heartbeat", "0"], "argument --heartbeat: 0 is less"),
        (["runs", "--status", "finished"], "argument --status: invalid choice: 'finished'"),
        (["runs", "--bogus"], "unrecognized arguments: --bogus"),
        (["nonsense"], "invalid choice: 'nonsense'"),
    ],
)
def test_bad_options_are_usage_errors(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    with pytest.raises(SystemExit) as exited:
        main([*args, "--store", f"sqlite:///{tmp_path / 's.db'}"])
    assert exited.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "s.db").exists()  # refused before any store was opened


def test_an_option_quoted_back_shows_its_control_characters_escaped(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["runs", "--status", "\x1b]0;pwned\x07\x1b[2J"])
    assert exited.value.code == 2
    said = capsys.readouterr().err
    assert "\x1b" not in said and "\x07" not in said
    assert "'\\x1b]0;pwned\\x07\\x1b[2J'" in said


@pytest.mark.parametrize("url", ["mysql://u:pw@h/db", "sqlite://relative.db", "nosuchscheme"])
def test_a_bad_store_url_is_one_line_and_exit_2(
    url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["runs", "--store", url]) == 2
    said = capsys.readouterr().err
    assert said.startswith("agentfsm: error: ") and said.count("\n") == 1
    assert "pw" not in said
