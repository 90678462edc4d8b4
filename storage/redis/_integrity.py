"""Integrity before progress: a run whose history the server lost is refused, not resumed.

A run hash says how far the run got (`seq`); its events stream holds one entry per commit
(ids `0-1`, `1-0` .. `seq-0`) and its keys hash the idempotency keys of those commits. Under
`maxmemory-policy allkeys-lru` Redis may evict one and keep the other, and a failover or a
restart without `appendfsync always` may roll some back. Resuming such a run would run
committed steps again (their keys are gone) on a partial history. `load` asks for the
stream's length and last id and the keys hash's size in the same round trip as the run
(`ask`), and `check` refuses a run they disagree with, naming what is missing and how to
restore it. Nothing is added to the commit's round trip.
"""

from __future__ import annotations

from typing import Any

from ..base import RunRecord
from ..errors import HistoryLost

__all__ = ["ask", "check"]


def ask(pipe: Any, events: str, keys: str) -> None:
    """Queue the questions `check` needs on `pipe`."""
    pipe.xlen(events)
    pipe.xrevrange(events, "+", "-", count=1)
    pipe.hlen(keys)


def check(run: RunRecord, key: str, answers: list[Any]) -> None:
    """`HistoryLost` unless the answers to `ask` agree with `run`."""
    length, last, keyed = answers
    want = "0-1" if run.seq == 0 else f"{run.seq}-0"
    last_id = str(last[0][0]) if last else ""
    missing = []
    if int(length) < run.seq + 1 or last_id != want:
        missing.append(
            f"its events stream holds {int(length)} of its {run.seq + 1} events"
            f" (last {last_id or 'none'}, not {want})"
        )
    if int(keyed) == 0:
        missing.append("its idempotency keys are gone")
    if missing:
        raise HistoryLost(run.run_id, key, "; ".join(missing))
