"""Agent names and run ids are checked like state names: they become parts of store keys."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from agents import Agent, tool
from statemachine import DefinitionError
from storage import Store


class Memo(BaseModel):
    n: int = 0


def agent(name: str) -> Agent[Memo]:
    return Agent(
        name=name, memory=Memo, initial="a", final=["done"],
        transitions=[tool("go", "a", "done", lambda m: 1, into="n")],
    )  # fmt: skip


@pytest.mark.parametrize("name", ["billing:v2", "evil[/]name", "", "a b", "{tag}", "x" * 101])
def test_an_agent_name_outside_the_alphabet_is_refused(name: str) -> None:
    with pytest.raises(DefinitionError, match="machine name") as caught:
        agent(name)
    assert "letters, digits, _ . -" in str(caught.value) or "at most 100" in str(caught.value)


@pytest.mark.parametrize("name", ["billing.v2", "dead", "run", "agent_1", "x" * 100])
def test_names_in_the_alphabet_are_fine(name: str) -> None:
    assert agent(name).name == name


@pytest.mark.parametrize("run_id", ["", " ", "a{b}", "-x", "x" * 201])
async def test_a_bad_run_id_is_refused_at_start_and_nothing_is_written(
    store: Store, run_id: str
) -> None:
    with pytest.raises(ValueError, match="invalid run id"):
        await agent("names").start(store, Memo(), run_id=run_id)
    assert await store.list_runs() == []


async def test_a_bad_new_run_id_is_refused_at_fork(store: Store) -> None:
    a = agent("names")
    run = await a.start(store, Memo(), run_id="r1")
    await run.until_done()
    with pytest.raises(ValueError, match="invalid run id"):
        await a.fork(store, "r1", 0, new_run_id="")
    assert [r.run_id for r in await store.list_runs()] == ["r1"]
