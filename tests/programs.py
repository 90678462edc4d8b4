"""Programs the tests run (redis-server, dot, chromium, openssl): found, or the test stops."""

from __future__ import annotations

import os
import shutil

import pytest

__all__ = ["require_program", "require_programs"]


def require_program(name: str, install: str, needed_by: str) -> str:
    """The program's path. When it is missing, the test fails under CI=true (CI must run
    `needed_by`) and is skipped elsewhere, saying how to `install` it."""
    [found] = require_programs((name, install), needed_by=needed_by)
    return found


def require_programs(*programs: tuple[str, str], needed_by: str) -> list[str]:
    """The paths of the `(name, install)` programs, in order. When any is missing, the test
    stops as in `require_program`, naming every one that is missing."""
    found = [(shutil.which(name), name, install) for name, install in programs]
    missing = [f"{name} is not installed ({install})" for path, name, install in found if not path]
    if missing:
        message = "; ".join(missing)
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"{message}; CI must run {needed_by}")
        pytest.skip(message)
    return [path for path, _, _ in found if path]
