"""The engine's clock: one `now()` for every time a run records or compares (events'
times, deadlines, retention), called as `_clock.now()` so that a test can move it on in one
place instead of sleeping."""

from __future__ import annotations

import time

__all__ = ["now"]

now = time.time
