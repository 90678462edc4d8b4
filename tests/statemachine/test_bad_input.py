"""Every bad input gets a clear error that names the problem, and nothing committed changes."""

from __future__ import annotations

import re

import pytest
from pydantic import BaseModel

from agents import Agent, tool
from statemachine import DefinitionError, InvalidMemory, Machine, RunNotFound, transition
from statemachine.engine import Transition
from statemachine.errors import MemoryTooLarge, NoTransition
from storage import RedisStore, Store
from storage.errors import CorruptData

from ..upstream import field_refused


class Memo(BaseModel):
    n: int = 0
    ok: bool = True


def bump(m: Memo) -> int:
    return m.n + 1


def declare(transitions: list[Transition], **kw: object) -> Machine[Memo]:
    options: dict[str, object] = {"initial": "a", "final": ["done"], **kw}
    return Machine(name="bad", memory=Memo, transitions=transitions, **options)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("table", "options", "message"),
    [
        (
            [transition("go", "a", "planed")],
            {"states": ["a", "planned", "done"]},
            r"transition 'go' \(a -> planed\) goes to unknown state 'planed'"
            r" \(did you mean 'planned'\?\)",
        ),
        (
            [transition("go", "a", "dnoe")],
            {},
            r"state 'dnoe' is a dead end: it is not final and no transition leaves it"
            r" \(did you mean 'done'\?\)",
        ),
        (
            [transition("go", "a", "done"), transition("go", "a", "b"),
             transition("b", "b", "done")],
            {},
            "trigger 'go' is declared twice from state 'a' without a guard to choose between them",
        ),
        (
            [transition("go", "a", "done"), transition("other", "a", "done")],
            {},
            r"transition 'other' \(a -> done\) can never fire: 'go' \(a -> done\) comes before it",
        ),
        (
            [transition("go", "a", "b"), transition("back", "b", "a")],
            {},
            "no final state can be reached from 'a'",
        ),
        (
            [transition("go", "a", "done"), transition("lost", "island", "done")],
            {},
            "state 'island' cannot be reached from the initial state 'a'",
        ),
        (
            [transition("go", "a", "loop", guard=lambda m: True), transition("end", "a", "done"),
             transition("spin", "loop", "loop")],
            {},
            "state 'loop' can never reach a final state: every path from it loops forever",
        ),
        (
            [transition("go", "a", "done"), transition("again", "done", "a")],
            {},
            r"leaves final state 'done': a final state ends the run",
        ),
        ([transition("go", "a", "done")], {"final": []}, "declare at least one final state"),
        ([], {}, "the table has no transitions"),
        ([transition("go now", "a", "done")], {}, "trigger 'go now' is not a valid name"),
        ([transition("go", "a", "done")], {"initial": "start"}, "state 'start' is a dead end"),
    ],
)  # fmt: skip
def test_bad_tables_are_refused_at_declaration(
    table: list[Transition], options: dict[str, object], message: str
) -> None:
    with pytest.raises(DefinitionError, match=message):
        declare(table, **options)


def test_into_a_field_the_memory_does_not_have() -> None:
    with pytest.raises(DefinitionError, match=r"writes into='count', which is not a field of Memo"):
        Agent(
            name="bad", memory=Memo, initial="a", final=["done"],
            transitions=[tool("go", "a", "done", bump, into="count")],
        )  # fmt: skip


def test_a_tool_with_the_wrong_signature() -> None:
    with pytest.raises(DefinitionError, match=r"must take \(memory\) or \(memory, ctx\), not 3"):
        tool("go", "a", "done", lambda a, b, c: None)


def test_no_guard_passing_names_the_state_and_the_guards() -> None:
    def is_big(m: Memo) -> bool:
        return m.n > 10

    machine = declare(
        [
            transition("big", "a", "done", guard=is_big),
            transition("huge", "a", "done", guard=is_big),
        ]
    )
    with pytest.raises(
        NoTransition, match=r"state 'a' applies: .*'big' \[is_big\], 'huge' \[is_big\]"
    ):
        machine.next_transition("a", Memo())


def agent() -> Agent[Memo]:
    return Agent(
        name="counter", memory=Memo, initial="a", final=["done"],
        transitions=[
            tool("go", "a", "b", bump, into="n"), tool("go2", "b", "done", bump, into="n"),
        ],
    )  # fmt: skip


async def test_memory_that_fails_its_schema_writes_nothing(store: Store) -> None:
    with pytest.raises(InvalidMemory, match=re.escape(field_refused(Memo, {"n": "many"}))):
        await agent().start(store, {"n": "many"}, run_id="bad-memory")
    assert await store.load("bad-memory") is None
    assert await store.list_runs() == []


async def test_a_run_id_that_does_not_exist(store: Store) -> None:
    with pytest.raises(RunNotFound, match="no run with id 'ghost' in this store"):
        await agent().resume(store, "ghost")


async def test_a_run_id_that_cannot_be_a_key(store: Store) -> None:
    with pytest.raises(ValueError, match=r"invalid run id 'a b'"):
        await agent().start(store, Memo(), run_id="a b")


async def test_a_step_result_that_fails_the_schema_fails_the_run_and_keeps_memory(
    store: Store,
) -> None:
    machine = Agent(
        name="badstep", memory=Memo, initial="a", final=["done"],
        transitions=[tool("go", "a", "done", lambda m: "not a number", into="n", retries=3)],
    )  # fmt: skip
    run = await machine.start(store, Memo(n=7), run_id="bs")
    await run.until_done()
    assert (run.status, run.state) == ("failed", "a")
    stored = await store.load("bs")
    assert stored is not None and stored.memory == {"n": 7, "ok": True}
    last = (await store.history("bs"))[-1]
    assert last.error is not None and last.error["type"] == "InvalidMemory"
    assert last.attempt == 1  # a schema failure is not retried: it would fail the same way


async def test_corrupt_json_in_the_run_hash_is_named_and_left_alone(
    redis_store: RedisStore,
) -> None:
    machine = agent()
    run = await machine.start(redis_store, Memo(), run_id="corrupt")
    await run.until_done()
    key = redis_store.key("corrupt", "run")
    await redis_store.client.hset(key, "m:n", "{bad")
    before = await redis_store.client.hgetall(key)
    with pytest.raises(CorruptData, match=r"corrupt data in t\d+:\{corrupt\}:run memory field 'n'"):
        await machine.resume(redis_store, "corrupt")
    assert await redis_store.client.hgetall(key) == before


class Notes(BaseModel):
    text: str = ""
    log: list[str] = []


def notes_agent(limit: int, grow: int) -> Agent[Notes]:
    return Agent(
        name="notes", memory=Notes, initial="a", final=["done"], on_error="failed",
        max_memory=limit,
        transitions=[
            tool("small", "a", "b", lambda m: "x" * 10, into="text"),
            tool("grow", "b", "done", lambda m: ["y" * grow], into="log"),
        ],
    )  # fmt: skip


async def test_memory_over_the_limit_is_refused_at_start_and_nothing_is_written(
    store: Store,
) -> None:
    agent = notes_agent(limit=100, grow=1)
    with pytest.raises(MemoryTooLarge, match=r"takes 1\d\d bytes as JSON, over the limit of 100"):
        await agent.start(store, Notes(text="z" * 100), run_id="big")
    assert await store.load("big") is None


async def test_a_step_that_would_grow_the_memory_over_the_limit_fails_before_writing(
    store: Store,
) -> None:
    agent = notes_agent(limit=200, grow=500)
    run = await agent.start(store, Notes(), run_id="grows")
    await run.until_done()
    assert (run.state, run.status) == ("failed", "failed")
    stored = await store.load("grows")
    assert stored is not None and stored.memory == {"text": "x" * 10, "log": []}
    last = (await store.history("grows"))[-1]
    assert last.kind == "error" and last.patch == {} and last.error is not None
    assert last.error["type"] == "MemoryTooLarge"
    assert "over the limit of 200; nothing was written" in str(last.error["message"])
    # Under the limit the same table runs through.
    ok = await notes_agent(limit=2000, grow=500).start(store, Notes(), run_id="fits")
    await ok.until_done()
    assert ok.status == "done"


def test_the_limit_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_memory must be positive bytes"):
        notes_agent(limit=0, grow=1)
