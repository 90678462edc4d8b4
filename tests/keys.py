"""Idempotency keys in tests: `plain(key)` leaves the run's random nonce out, so a test can
spell the rest of a key (`"r1:1:act:c-add"`) and still check every other part of it."""

from __future__ import annotations

import re

_NONCE = re.compile(r":[0-9a-f]{16}(?=:)")


def plain(text: str) -> str:
    """`text` (a key, or a line holding one) without the first key's nonce."""
    return _NONCE.sub("", text, count=1)
