"""Run a module with only what `pip install "agentfsm[EXTRA]"` would install importable.

    python -m tests.only_extras EXTRA[,EXTRA...] MODULE [ARGS...]

Every distribution outside the closure of the core dependencies and the named extras (read
from pyproject.toml, then followed through the installed packages' own requirements) is
hidden: importing a module it provides raises `ModuleNotFoundError`, as on a machine that
installed only those extras. The dev extra installs more than any user has, so this is how a
test sees an extra that lacks a package (`[ui]` without python-multipart made every form fail).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import runpy
import sys
import tomllib
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from types import ModuleType

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
OWN = frozenset({"agents", "statemachine", "storage", "tests", "bench"})

__all__ = ["allowed_distributions", "hidden_modules"]


def _wanted(requirement: Requirement, extras: set[str]) -> bool:
    if requirement.marker is None:
        return True
    return any(requirement.marker.evaluate({"extra": e}) for e in extras | {""})


def allowed_distributions(extras: Sequence[str]) -> set[str]:
    """The canonical names of every distribution `agentfsm[extras]` installs."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    todo = [Requirement(r) for r in project["dependencies"]]
    for extra in extras:
        todo += [Requirement(r) for r in project["optional-dependencies"][extra]]
    allowed: dict[str, set[str]] = {}
    while todo:
        requirement = todo.pop()
        name = canonicalize_name(requirement.name)
        wanted = set(requirement.extras)
        if name in allowed and wanted <= allowed[name]:
            continue
        allowed[name] = allowed.get(name, set()) | wanted
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue  # not installed here: then nothing of it can be imported anyway
        for text in requires:
            sub = Requirement(text)
            if _wanted(sub, allowed[name]):
                todo.append(sub)
    return set(allowed)


def hidden_modules(extras: Sequence[str]) -> dict[str, list[str]]:
    """Top-level modules that only distributions outside `agentfsm[extras]` provide."""
    allowed = allowed_distributions(extras)
    hidden = {}
    for module, dists in metadata.packages_distributions().items():
        if module in OWN or module in sys.stdlib_module_names:
            continue
        if not any(canonicalize_name(d) in allowed for d in dists):
            hidden[module] = dists
    return hidden


class _Hide(importlib.abc.MetaPathFinder):
    def __init__(self, hidden: dict[str, list[str]], extras: str) -> None:
        self.hidden, self.extras = hidden, extras

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        top = fullname.partition(".")[0]
        if top in self.hidden:
            raise ModuleNotFoundError(
                f"No module named {fullname!r} (hidden: it comes from {self.hidden[top]},"
                f" which agentfsm[{self.extras}] does not install)",
                name=fullname,
            )
        return None


def main(argv: list[str]) -> None:
    extras, module, *args = argv
    hidden = hidden_modules(extras.split(","))
    for name in [m for m in sys.modules if m.partition(".")[0] in hidden]:
        del sys.modules[name]
    sys.meta_path.insert(0, _Hide(hidden, extras))
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
