"""The lock (.ci/constraints.txt) fits pyproject.toml: every dependency, of the core and of every
extra, is locked at a version its range admits, so the README's test command installs what the
suite was last green with instead of failing to resolve or drifting to a new release."""

from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def _locked() -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for line in (ROOT / ".ci" / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"not a pin in the lock: {line!r}"
            pins[canonicalize_name(name)] = Version(version)
    return pins


def test_every_declared_dependency_is_locked_inside_its_range() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = [*project["dependencies"]]
    for requirements in project["optional-dependencies"].values():
        declared += requirements
    locked = _locked()
    for text in declared:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        if name == "agentfsm":
            continue  # an extra that names another extra of ours
        if name not in locked and "anthropic" in requirement.extras:
            continue  # the anthropic extra's SDK is not part of the test install
        assert name in locked, f"{requirement.name} is not in .ci/constraints.txt: bash .ci/forward"
        assert requirement.specifier.contains(locked[name], prereleases=True), (
            f"{name}=={locked[name]} in .ci/constraints.txt is outside pyproject's {text!r}"
        )
