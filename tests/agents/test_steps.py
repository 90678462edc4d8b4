"""Where a sync tool function runs: in a worker thread, inline, or as its calls have shown."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from pydantic import BaseModel

import agents.steps._steps
from agents import Agent, tool
from agents.steps._steps import SHORT_CALLS_FIRST, Placement
from storage import open_store


class Seen(BaseModel):
    inline: list[bool] = []
    """Per call: True when the function ran on the event loop's thread."""


async def places(calls: int, **options: Any) -> list[bool]:
    loop_thread = threading.get_ident()

    def where(m: Seen) -> list[bool]:
        return [*m.inline, threading.get_ident() == loop_thread]

    agent = Agent(
        name="placed", memory=Seen, initial="s", final="done",
        transitions=[
            tool("tick", "s", "s", where, into="inline", guard=lambda m: len(m.inline) < calls,
                 **options),
            tool("end", "s", "done", lambda m: None, in_thread=False),
        ],
    )  # fmt: skip
    store = open_store("memory://")
    try:
        run = await agent.start(store, Seen())
        await run.until_done()
        return run.memory.inline
    finally:
        await store.close()


async def test_a_short_sync_tool_runs_in_a_thread_first_then_inline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(agents.steps._steps, "INLINE_BELOW", 3600.0)  # every call counts as short
    assert await places(SHORT_CALLS_FIRST + 3) == [False] * SHORT_CALLS_FIRST + [True] * 3


async def test_a_sync_tool_with_a_timeout_always_runs_in_a_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(agents.steps._steps, "INLINE_BELOW", 3600.0)
    assert await places(SHORT_CALLS_FIRST + 2, timeout=60) == [False] * (SHORT_CALLS_FIRST + 2)


async def test_in_thread_true_or_false_is_where_it_runs_every_time() -> None:
    assert await places(SHORT_CALLS_FIRST + 2, in_thread=True) == [False] * (SHORT_CALLS_FIRST + 2)
    assert await places(SHORT_CALLS_FIRST + 2, in_thread=False) == [True] * (SHORT_CALLS_FIRST + 2)


def test_a_long_call_inline_sends_the_tool_back_to_the_thread_for_good() -> None:
    placement = Placement()
    for _ in range(SHORT_CALLS_FIRST):
        assert not placement.inline
        placement.took(0.0, inline=False)
    assert placement.inline
    placement.took(agents.steps._steps.INLINE_BELOW, inline=True)
    assert not placement.inline
    for _ in range(SHORT_CALLS_FIRST * 2):
        placement.took(0.0, inline=False)
    assert not placement.inline


def test_a_long_call_in_the_thread_starts_the_count_again() -> None:
    placement = Placement()
    placement.took(0.0, inline=False)
    placement.took(1.0, inline=False)
    for _ in range(SHORT_CALLS_FIRST - 1):
        placement.took(0.0, inline=False)
    assert not placement.inline
    placement.took(0.0, inline=False)
    assert placement.inline


async def test_steps_that_run_one_function_learn_its_place_together(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(agents.steps._steps, "INLINE_BELOW", 3600.0)
    loop_thread = threading.get_ident()

    def where(m: Seen) -> list[bool]:
        return [*m.inline, threading.get_ident() == loop_thread]

    steps = SHORT_CALLS_FIRST + 2
    agent = Agent(
        name="chained", memory=Seen, initial="s0", final=f"s{steps}",
        transitions=[tool(f"t{i}", f"s{i}", f"s{i + 1}", where, into="inline")
                     for i in range(steps)],
    )  # fmt: skip
    store = open_store("memory://")
    run = await agent.start(store, Seen())
    await run.until_done()
    await store.close()
    assert run.memory.inline == [False] * SHORT_CALLS_FIRST + [True] * 2
