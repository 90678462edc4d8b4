"""Programs the tests run (redis-server, dot, chromium, openssl): found, or the test stops."""

from __future__ import annotations

import os
import shutil

import pytest

__all__ = ["require_program"]


def require_program(name: str, install: str, needed_by: str) -> str:
    """The program's path. When it is missing, the test fails under CI=true (CI must run
    `needed_by`) and is skipped elsewhere, saying how to `install` it."""
    found = shutil.which(name)
    if found:
        return found
    message = f"{name} is not installed ({install})"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{message}; CI must run {needed_by}")
    pytest.skip(message)
