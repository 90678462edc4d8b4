"""The Lua scripts of the Redis backend (`scripts/*.lua`, package data), read once each."""

from __future__ import annotations

import functools
from importlib.resources import files

__all__ = ["script_text"]


@functools.cache
def script_text(name: str) -> str:
    """The text of `scripts/<name>.lua`."""
    return files(__package__).joinpath("scripts", f"{name}.lua").read_text(encoding="utf-8")
