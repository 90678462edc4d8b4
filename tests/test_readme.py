"""README.md's example runs as written (on the in-process store, with pydantic-ai's test model),
and its test command is the one .ci/run runs."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_the_readme_example_runs() -> None:
    [code] = re.findall(r"```python\n(.*?)```", README, re.S)
    assert 'model="openai:gpt-4o-mini"' in code and "open_store()" in code
    offline = code.replace('model="openai:gpt-4o-mini"', 'model="test"').replace(
        "open_store()", 'open_store("memory://")'
    )
    namespace: dict[str, object] = {"__name__": "readme_example"}
    exec(compile(offline, "README.md", "exec"), namespace)  # the README's own code, not data
    run = namespace["run"]
    assert run.status == "done"  # type: ignore[attr-defined]
    assert run.memory.stats == {"mean": 26.5, "max": 100.0}  # type: ignore[attr-defined]


def test_ci_runs_the_readme_test_command() -> None:
    commands = re.findall(r"```sh\n(.*?)\n```", README, re.S)
    test_command = next(c for c in commands if "pytest" in c)
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_command in ci
