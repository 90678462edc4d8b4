"""Time travel: fork a run from a past commit to try another path; the original stays."""

from __future__ import annotations

import pytest

from agents import Agent
from agents.examples import data_analyst
from agents.examples._offline import offline_model
from statemachine import RunError, RunNotFound
from statemachine.errors import MemoryTooLarge
from storage import Store

DATASET = [12.1, 11.8, 12.4, 12.0, 11.9, 12.3, 48.7, 12.2, 11.7, 12.1]


def analyst() -> Agent[data_analyst.Analysis]:
    return data_analyst.analyst.with_model(offline_model("analyst", data_analyst._offline_reply))


async def test_a_fork_goes_on_from_a_past_commit_with_changed_memory(store: Store) -> None:
    agent = analyst()
    original = await agent.start(store, {"dataset": DATASET}, run_id="orig")
    await original.until_done()
    before = (await store.load("orig"), await store.history("orig"))

    fork = await agent.fork(
        store, "orig", 3, new_run_id="alt", memory_update={"interpretation": "Look again."}
    )
    assert (fork.state, fork.status, fork.seq) == ("interpreted", "running", 0)
    assert fork.memory.interpretation == "Look again."
    assert fork.memory.stats == original.memory.stats  # as it was after commit 3
    assert fork.memory.report == ""
    [start] = await fork.history()
    assert start.output == {"forked_from": "orig", "at": 3, "memory_update": ["interpretation"]}
    assert len(start.messages) == 4  # the conversation up to commit 3 (plan, interpret)
    await fork.until_done()
    assert fork.status == "done" and "Look again." in fork.memory.report  # the new path
    assert [e.trigger for e in await fork.history()] == ["start", "detect", "report"]
    # The report step saw the conversation the original had at the fork point.
    report = (await fork.history())[-1]
    assert report.usage is not None and report.usage["input_tokens"] > 100
    assert (await store.load("orig"), await store.history("orig")) == before  # untouched


async def test_bad_forks_are_refused_and_write_nothing(store: Store) -> None:
    agent = analyst()
    run = await agent.start(store, {"dataset": DATASET}, run_id="orig")
    await run.until_done()
    with pytest.raises(RunNotFound):
        await agent.fork(store, "ghost", 1)
    with pytest.raises(ValueError, match=r"seq 9 is out of range: the events cover seqs 0\.\.5"):
        await agent.fork(store, "orig", 9)
    with pytest.raises(ValueError, match=r"memory_update names unknown fields \['colour'\]"):
        await agent.fork(store, "orig", 2, memory_update={"colour": "red"})
    with pytest.raises(ValueError, match="memory fails the Analysis schema: plan"):
        await agent.fork(store, "orig", 2, memory_update={"plan": 7})
    with pytest.raises(RunError, match="a run with id 'orig' exists"):
        await agent.fork(store, "orig", 2, new_run_id="orig")
    with pytest.raises(MemoryTooLarge, match=r"forking 'orig': the memory takes \d+ bytes"):
        await agent.fork(store, "orig", 2, memory_update={"plan": "x" * 17 * 2**20})
    assert [r.run_id for r in await store.list_runs()] == ["orig"]
