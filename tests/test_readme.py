"""README.md's Python example runs as written, in a fresh process with no API key, and says
what happened when it is run again; its test command is the one .ci/run runs."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from storage import EmbeddedStore

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
KEYS = ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "OPENAI_BASE_URL", "AGENTFSM_STORE")


def example(cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """The README's Python block, saved as a script and run by a new interpreter in `cwd`."""
    [code] = re.findall(r"```python\n(.*?)```", README, re.S)
    script = cwd / "example.py"
    script.write_text(code)
    clean = {k: v for k, v in os.environ.items() if k not in KEYS}
    return subprocess.run(
        [sys.executable, str(script)],
        cwd=cwd,
        env={**clean, "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_readme_example_runs_as_written_with_no_api_key(tmp_path: Path) -> None:
    first = example(tmp_path)
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines() == [  # the offline model's canned answers read as real
        "model: offline (OPENAI_API_KEY is not set)",
        "analysis-42 done mean 26.5 and maximum 100: the maximum is far above the mean, an"
        " outlier.",
    ]

    async def stats() -> object:
        store = EmbeddedStore(tmp_path / ".agentfsm" / "store.db")
        try:
            run = await store.load("analysis-42")
            return None if run is None else run.memory["stats"]
        finally:
            await store.close()

    assert asyncio.run(stats()) == {"mean": 26.5, "max": 100.0}  # the tool ran, for real
    again = example(tmp_path)  # the same run id: the stored run, nothing runs again
    assert (again.returncode, again.stdout, again.stderr) == (0, first.stdout, "")


class _Refusing(BaseHTTPRequestHandler):
    """An OpenAI-compatible endpoint on loopback that refuses every API key."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = json.dumps(
            {
                "error": {
                    "message": "Incorrect API key provided: sk-wrong",
                    "type": "invalid_request_error",
                    "code": "invalid_api_key",
                }
            }
        )
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass


@pytest.fixture
def refusing_openai() -> Iterator[str]:
    server = HTTPServer(("127.0.0.1", 0), _Refusing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


def test_a_failed_example_says_why_and_run_again_says_how_to_retry(
    tmp_path: Path, refusing_openai: str
) -> None:
    first = example(tmp_path, OPENAI_API_KEY="sk-wrong", OPENAI_BASE_URL=refusing_openai)
    assert first.returncode == 0, first.stderr
    model, result = first.stdout.splitlines()
    assert model == "model: openai:gpt-4o-mini"
    assert result.startswith("analysis-42 failed {'type': 'ModelAuthenticationError'")
    assert "Incorrect API key provided" in result and "'trigger': 'plan'" in result

    again = example(tmp_path)  # the key "fixed" (unset: the offline model), the same run id
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines()[1] == result  # the stored failure, not a bare "failed"
    said = again.stderr
    assert "run 'analysis-42' had failed before this call, at step 'plan'" in said
    assert "nothing ran" in said and "run.retry()" in said and "agentfsm retry analysis-42" in said


def test_ci_runs_the_readme_test_command() -> None:
    commands = re.findall(r"```sh\n(.*?)\n```", README, re.S)
    test_command = next(c for c in commands if "pytest" in c)
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_command in ci


def test_the_recovery_walkthrough_does_what_the_readme_says(tmp_path: Path) -> None:
    """The "Watch it recover" commands as written, in a fresh directory: their exit codes,
    and the model requests each process says it made."""
    block = README[README.index("## Watch it recover") :]
    [commands] = re.findall(r"```sh\n(.*?)\n```", block, re.S)[:1]
    clean = {k: v for k, v in os.environ.items() if k not in (*KEYS, "AGENTFSM_MODEL")}
    said = []
    for line in commands.splitlines():
        command, _, comment = line.partition("#")
        argv = shlex.split(command)
        assert argv[0] == "agentfsm"
        done = subprocess.run(
            [sys.executable, "-m", "agents", *argv[1:]], cwd=tmp_path,
            env={**clean, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        expected = re.search(r"\(exit (\d)\)", comment)
        assert done.returncode == (int(expected.group(1)) if expected else 0), done.stderr
        said.append(done.stdout)
    requests = [re.findall(r"model requests made by this process: (\d+)", out) for out in said]
    assert requests[:2] == [["2"], ["1"]]  # as the paragraph below the block says
    assert "model requests made by this process: 2" in README[README.index("## Watch it") :]
    assert "detect" in said[2] and "status   done" in said[3]


def test_the_way_to_your_own_agent_does_what_the_readme_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """ "From the demo to your agent": the README's agent as a module of the working
    directory, driven by the commands as written. The first runs in a new process (the
    installed `agentfsm` script when there is one: it finds the module in the working
    directory, as the README says); the others in this one, for speed."""
    from agents.cli import main

    [code] = re.findall(r"```python\n(.*?)```", README, re.S)
    (tmp_path / "my_agents.py").write_text(code[: code.index("store = open_store()")])
    block = README[README.index("## From the demo to your agent") :]
    [commands] = re.findall(r"```sh\n(.*?)\n```", block, re.S)[:1]
    script = Path(sys.executable).parent / "agentfsm"
    launch = [str(script)] if script.exists() else [sys.executable, "-m", "agents"]
    for key in (*KEYS, "AGENTFSM_MODEL"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.chdir(tmp_path)
    said = []
    for n, line in enumerate(commands.splitlines()):
        command, _, comment = line.partition("#")
        argv = shlex.split(command)
        assert argv[0] == "agentfsm"
        expected = re.search(r"\(exit (\d)\)", comment)
        if n == 0:
            done = subprocess.run(
                [*launch, *argv[1:]], cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)},
                capture_output=True, text=True, timeout=120,
            )  # fmt: skip
            code_, out = done.returncode, done.stdout + done.stderr
        else:
            code_ = main(argv[1:])
            out = capsys.readouterr().out
        assert code_ == (int(expected.group(1)) if expected else 0), (line, out)
        said.append(out)
    assert "reviewed → sent" in said[3]  # watch replays the steps, the send among them
    assert "status   done" in said[4] and "the maximum is far above the mean" in said[4]
