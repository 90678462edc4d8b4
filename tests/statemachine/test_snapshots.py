"""Snapshots: now and then a commit carries the whole memory, so `run.at(seq)` replays the
events after the latest snapshot, not the whole history; and a snapshot never disagrees with
the replay."""

from __future__ import annotations

import dataclasses
from typing import Any

from pydantic import BaseModel

from agents import Agent, tool
from statemachine._ledger import SNAPSHOT_EVERY
from statemachine._provenance import memory_at
from storage import Event, Store

STEPS = 200
NOTE = 1024


class Log(BaseModel):
    blob: str = "b" * 20_000
    n: int = 0
    note: str = ""


def more(memory: Log) -> dict[str, Any]:
    return {"n": memory.n + 1, "note": f"{memory.n:05d}" * (NOTE // 5)}


agent = Agent(
    name="logger", memory=Log, initial="s", final=["done"],
    transitions=[
        tool("add", "s", "s", more, update=lambda m, out: out, in_thread=False,
             guard=lambda m: m.n < STEPS),
        tool("end", "s", "done", lambda m: None, in_thread=False),
    ],
)  # fmt: skip


class CountingReads:
    """The real store, counting the events `history` hands out (to show reads are bounded)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.events_read = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    async def history(
        self, run_id: str, from_seq: int = 0, to_seq: int | None = None
    ) -> list[Event]:
        events = await self.store.history(run_id, from_seq, to_seq)
        self.events_read += len(events)
        return events


async def test_snapshots_keep_rebuilding_the_memory_bounded_and_exact(store: Store) -> None:
    run = await agent.start(store, Log(), run_id="long")
    await run.until_done()
    history = await store.history("long")
    assert len(history) == STEPS + 2
    snapshots = [e for e in history if e.snapshot is not None]
    # One per SNAPSHOT_EVERY bytes of patches (the memory is smaller than that here).
    assert len(snapshots) == (STEPS * (NOTE + 4)) // SNAPSHOT_EVERY
    plain = [dataclasses.replace(e, snapshot=None) for e in history]  # replay from seq 0
    for e in snapshots:
        assert memory_at(plain, e.seq) == (e.dest, e.snapshot)  # the memory at its seq

    counting = CountingReads(store)
    resumed = await agent.resume(counting, "long")
    for seq in (0, 1, 63, 64, 65, 150, STEPS, STEPS + 1):
        counting.events_read = 0
        state, memory = await resumed.at(seq)
        expected = memory_at(plain, seq)
        assert (state, memory.model_dump(mode="json")) == expected
        assert counting.events_read <= 64 + 2 * (SNAPSHOT_EVERY // NOTE)  # not the whole run
