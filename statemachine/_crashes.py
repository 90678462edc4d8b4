"""Crash accounting: how many of a run's process deaths happened while a step was running.

A holder that took the lease publishes its first step's "started" item before it runs the
step, and waits until it is stored (`Publisher.started_now`), so the live channel tells a
death during a step from one before it (`deaths_in_step`). `RunRecord.crashes` counts the
takeovers since the last commit; the step's `crash_retries` bounds those that count."""

from __future__ import annotations

from storage import RunRecord, Store

__all__ = ["deaths_in_step"]

_NOTICES = frozenset({"committed", "stopped"})
"""Items a commit writes with base = its own seq: they say nothing about the step after it."""


async def deaths_in_step(store: Store, record: RunRecord) -> int:
    """How many of the holders that died since commit `record.seq` died running the step
    after it: all of them (`record.crashes`) when one began it, none when each died before.

    No item of a step after the seq (a commit's own notices do not count), and no holder
    that committed the seq and went straight on stepping (the last event is the run's start,
    or a command's: a retry, a raised budget), means every holder died before its first
    step, e.g. right after `start` took the lease."""
    seq = record.seq
    after: str | None = None
    while True:
        page = await store.live(record.run_id, after)
        if any(entry.base == seq and entry.item.get("kind") not in _NOTICES for entry in page):
            return record.crashes
        if len(page) < 1000:
            break
        after = page[-1].id
    last = await store.history(record.run_id, seq, seq)
    went_on = bool(last) and last[0].kind not in ("start", "control")
    return record.crashes if went_on else 0
