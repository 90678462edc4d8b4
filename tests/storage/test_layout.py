"""The layout of `storage/`, as tests: one folder per backend, small modules, no import circle,
and no backend loaded before a store of its kind is opened."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STORAGE = ROOT / "storage"
BACKENDS = ("redis", "embedded")


def _modules() -> dict[str, Path]:
    found = {}
    for path in STORAGE.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The modules of `storage` that `name` imports (TYPE_CHECKING imports too)."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            for alias in node.names:
                full = f"{module}.{alias.name}"
                found.add(full if full in modules else module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
    return {m for m in found if m in modules and m != name}


def test_no_module_is_over_500_lines() -> None:
    long = {
        p.name: n for p in STORAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > 500
    }
    assert long == {}


def test_no_import_circle_inside_storage() -> None:
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            raise AssertionError(f"import circle: {' -> '.join([*path[path.index(name) :], name])}")
        if name in done:
            return
        for target in sorted(graph[name]):
            visit(target, [*path, name])
        done.add(name)

    for name in sorted(graph):
        visit(name, [])


def test_a_backend_imports_no_other_backend() -> None:
    modules = _modules()
    for name, path in modules.items():
        own = name.split(".")[1] if name.count(".") >= 1 else ""
        for target in _imports(name, path, modules):
            other = target.split(".")[1] if target.count(".") >= 1 else ""
            if other in BACKENDS and own != other:
                # the lazy doors: open_store, the package's __getattr__, `python -m storage.rekey`
                assert name in ("storage", "storage._open", "storage.rekey"), (name, target)


def test_importing_storage_or_statemachine_loads_no_backend() -> None:
    probe = (
        "import sys, storage, statemachine; print(sorted(m for m in sys.modules"
        " if m.split('.')[0] in ('redis', 'sqlite3', '_sqlite3')"
        " or m.startswith(('storage.redis', 'storage.embedded'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout.strip()
    assert out == "[]"


def test_each_backend_loads_when_a_store_of_its_kind_is_opened() -> None:
    probe = (
        "import sys, storage; s = storage.open_store('memory://');"
        " print('storage.embedded' in sys.modules, 'storage.redis' in sys.modules,"
        " type(s).__module__, storage.EmbeddedStore is type(s))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout.split()
    assert out == ["True", "False", "storage", "True"]
