"""House conventions, as tests: layering, JSON only, public names, our own packages."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ["statemachine", "storage", "agents"]


def _imports(package: str) -> set[str]:
    found: set[str] = set()
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module.split(".")[0])
    return found


def test_dependencies_point_one_way() -> None:
    assert not _imports("storage") & {"statemachine", "agents", "pydantic_ai"}
    assert not _imports("statemachine") & {"agents", "redis", "pydantic_ai"}


def test_nothing_imports_pickle_or_calls_eval() -> None:
    for package in PACKAGES:
        assert "pickle" not in _imports(package)
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                    assert node.func.id not in ("eval", "exec"), f"{path}: {node.func.id}()"


@pytest.mark.parametrize("package", PACKAGES)
def test_our_packages_resolve_to_this_project(package: str) -> None:
    module = importlib.import_module(package)
    assert module.__file__ is not None
    assert Path(module.__file__).resolve().parent == ROOT / package


@pytest.mark.parametrize("package", PACKAGES)
def test_public_names_are_listed_once_sorted_and_exist(package: str) -> None:
    module = importlib.import_module(package)
    names = list(module.__all__)
    assert names == sorted(names) and len(names) == len(set(names))
    for name in names:
        assert getattr(module, name) is not None


@pytest.mark.parametrize("package", PACKAGES)
def test_public_dataclasses_are_frozen_and_keyword_only(package: str) -> None:
    module = importlib.import_module(package)
    for name in module.__all__:
        obj = getattr(module, name)
        if isinstance(obj, type) and dataclasses.is_dataclass(obj):
            params = obj.__dataclass_params__  # type: ignore[attr-defined]
            assert params.frozen, f"{package}.{name} is not frozen"
            assert all(f.kw_only for f in dataclasses.fields(obj)), (
                f"{package}.{name} is not kw_only"
            )


def test_statemachine_imports_no_redis_code() -> None:
    # A fresh interpreter: in this one, other tests have loaded redis long ago.
    probe = (
        "import sys, statemachine; print(sorted(m for m in sys.modules"
        " if m.split('.')[0] in ('redis', 'sqlite3', '_sqlite3')"
        " or m.startswith(('storage.redis', 'storage.embedded'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == "[]", f"importing statemachine loaded {out}"
