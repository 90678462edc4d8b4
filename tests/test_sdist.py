"""The source distribution is complete: it carries the license, the docs, the tests and their
helpers, and part of the suite runs from an unpacked sdist against the code in it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
from importlib.metadata import version
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Not sources: what .gitignore names, and the repository itself.
NOT_SOURCES = shutil.ignore_patterns(
    ".git", "__pycache__", "*.egg-info", ".agentfsm", ".mypy_cache", ".ruff_cache",
    ".pytest_cache", ".benchmarks", "build", "dist", ".venv",
)  # fmt: skip
MUST_SHIP = [
    "LICENSE", "README.md", "pyproject.toml", "MANIFEST.in", ".ci/run", ".ci/constraints.txt",
    "docs/architecture.md", "docs/reliability.md", "docs/report.png", "bench/README.md",
    "tests/__init__.py", "tests/conftest.py", "tests/programs.py", "tests/redis_server.py",
    "tests/agents/conftest.py", "tests/agents/ticket_agent.py",
    "agents/cli/__init__.py", "agents/examples/data_analyst.py", "storage/redis/scripts/commit.lua",
    "statemachine/py.typed",
]  # fmt: skip


def _build_tools() -> None:
    """`build` and a setuptools new enough for pyproject's SPDX license (the dev extra)."""
    try:
        import build  # noqa: F401

        major = int(version("setuptools").split(".")[0])
    except ImportError:
        major = 0
    if major < 77:
        message = 'building the sdist needs `build` and setuptools>=77: pip install -e ".[dev]"'
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module")
def unpacked(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sdist built from a copy of the sources (no network: --no-isolation), unpacked."""
    _build_tools()
    work = tmp_path_factory.mktemp("sdist")
    source = work / "source"
    shutil.copytree(ROOT, source, ignore=NOT_SOURCES)
    built = subprocess.run(
        [sys.executable, "-m", "build", "--sdist", "--no-isolation", "--outdir", str(work)],
        cwd=source, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    said = built.stdout + built.stderr
    assert built.returncode == 0, said[-6000:]
    assert "would be ignored" not in said, said  # every data folder is part of a package
    [sdist] = work.glob("agentfsm-*.tar.gz")
    with tarfile.open(sdist) as tar:
        tar.extractall(work / "unpacked", filter="data")
    [top] = (work / "unpacked").iterdir()
    return top


def test_the_sdist_carries_license_docs_tests_and_their_helpers(unpacked: Path) -> None:
    missing = [name for name in MUST_SHIP if not (unpacked / name).is_file()]
    assert not missing
    assert "MIT License" in (unpacked / "LICENSE").read_text()
    assert not list(unpacked.rglob("__pycache__")) and not list(unpacked.rglob("*.pyc"))


def test_part_of_the_suite_runs_from_the_unpacked_sdist(unpacked: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    tests = ["tests/test_conventions.py", "tests/agents/test_cli_help.py"]
    ran = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests],
        cwd=unpacked, env={**env, "PYTHONPATH": str(unpacked)},
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stdout[-4000:] + ran.stderr[-2000:]
    assert " passed" in ran.stdout and "error" not in ran.stdout.lower()


def test_every_file_the_readme_links_to_ships_in_the_sdist(unpacked: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    linked = re.findall(r"\]\(([^)#\s]+)\)", readme)
    local = [target for target in linked if "://" not in target]
    assert "docs/architecture.md" in local and not [t for t in local if t.startswith("..")]
    assert [t for t in local if not (unpacked / t).exists()] == []
