"""The round-trip rule at the door: only JSON that reads back equal is written.

Refused, naming the place: floats that are not finite (NaN, Infinity: JSON has no such
numbers, and encoders disagree on them), nesting deeper than `MAX_DEPTH` levels (parsers
stop at about 200, and a stored value sits a few levels down in an event or an export
line), strings that are not Unicode text (lone surrogates), and anything that is not JSON.
Integers of any size, empty containers and all of Unicode round-trip and are kept.

The check costs one serialization, which the caller needed anyway (the bytes are returned),
and a few scans of those bytes in C (counting the brackets and looking for NaN usually
settles it; strings are stripped with a regex only when not): the slow walk that names the
place runs only on failure.
"""

from __future__ import annotations

import math
import re
from typing import Any

import pydantic_core

from .errors import Unstorable

__all__ = ["MAX_DEPTH", "json_bytes"]

MAX_DEPTH = 100
"""Levels of nesting (lists and objects in each other) a stored value may have."""
_ENVELOPE = 50
"""Levels an event or an export line adds around the values in it, at most."""

_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_NOT_BRACKET = re.compile(rb"[^\[\]{}]+")
_PAIR = re.compile(rb"\[\]|\{\}")
_NON_FINITE = re.compile(rb"NaN|Infinity")


def json_bytes(value: Any, where: str, *, envelope: bool = False) -> bytes:
    """`value` as compact JSON, or `Unstorable` naming `where` and the place inside it.

    With `envelope`, `value` is one of our own records (an event, an export line) holding
    user values, and may be nested `_ENVELOPE` levels deeper."""
    limit = MAX_DEPTH + (_ENVELOPE if envelope else 0)
    try:
        text = pydantic_core.to_json(value, inf_nan_mode="constants")
    except (pydantic_core.PydanticSerializationError, ValueError, RecursionError):
        raise Unstorable(where, _problem(value, limit) or "it is not JSON") from None
    if text.count(b"[") + text.count(b"{") <= limit and not (b"NaN" in text or b"Inf" in text):
        return text  # the usual case, without a regex pass: it cannot be nested too deep
    bare = _STRING.sub(b"", text) if b'"' in text else text  # brackets in strings do not nest
    if _NON_FINITE.search(bare) or _too_deep(bare, limit):
        raise Unstorable(where, _problem(value, limit) or "it is not JSON")
    return text


def _too_deep(bare: bytes, limit: int) -> bool:
    brackets = _NOT_BRACKET.sub(b"", bare)
    if len(brackets) <= 2 * limit:  # cannot nest deeper than half its brackets
        return False
    for _ in range(limit):  # each pass removes the innermost level everywhere
        brackets = _PAIR.sub(b"", brackets)
        if not brackets:
            return False
    return True


def _problem(value: Any, limit: int) -> str | None:
    """What is wrong with `value`, and where (`.key[3]`): a walk, without recursion."""
    todo: list[tuple[Any, str, int]] = [(value, "", 0)]
    while todo:
        item, path, depth = todo.pop()
        at = f" at {path}" if path else ""
        if isinstance(item, float) and not math.isfinite(item):
            return f"{item}{at} is not a finite number: JSON has no NaN or Infinity (use null)"
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return f"the string{at} is not Unicode text (it holds a lone surrogate)"
        elif isinstance(item, list | tuple | dict):
            if depth >= limit:
                return f"it is nested more than {limit} levels deep{at or ''}"
            if isinstance(item, dict):
                for key, inner in item.items():
                    if not isinstance(key, str):
                        return f"the key {key!r}{at} is not a string"
                    todo.append((key, path, depth))
                    todo.append((inner, f"{path}.{key}" if path else key, depth + 1))
            else:
                todo += [(inner, f"{path}[{i}]", depth + 1) for i, inner in enumerate(item)]
        elif item is not None and not isinstance(item, bool | int | float):
            return f"the {type(item).__name__} value{at} is not JSON"
    return None
