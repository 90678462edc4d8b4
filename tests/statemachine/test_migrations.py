"""Schema versions: a stored run of an older version is migrated when resumed, recorded as an
event; a newer one is refused; a run stranded in a state the table dropped is named, and
`state_renames` moves it on."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel, JsonValue

from agents import Agent, tool, wait
from statemachine import DefinitionError, InvalidMemory, RunError
from statemachine.errors import VersionMismatch
from storage import Store


class V1(BaseModel):
    name: str
    nickname: str = ""
    greeting: str = ""


class V2(BaseModel):
    full_name: str
    greeting: str = ""
    language: str = "en"


def v1_agent() -> Agent[V1]:
    return Agent(
        name="greeter", memory=V1, version=1, initial="new", final=["done"],
        transitions=[
            tool("prepare", "new", "review", lambda m: None),
            wait("approve", "review", "approved"),
            tool("greet", "approved", "done", lambda m: f"Hello {m.name}", into="greeting"),
        ],
    )  # fmt: skip


def to_v2(memory: dict[str, JsonValue]) -> dict[str, JsonValue]:
    memory["full_name"] = memory.pop("name")
    memory.pop("nickname")
    return memory


def v2_agent(**options: Any) -> Agent[V2]:
    settings: dict[str, Any] = {"migrations": {1: to_v2}, **options}
    return Agent(
        name="greeter", memory=V2, version=2, initial="new", final=["done"],
        transitions=[
            tool("prepare", "new", "checking", lambda m: None),
            wait("approve", "checking", "approved"),
            tool("greet", "approved", "done", lambda m: f"Hi {m.full_name}", into="greeting"),
        ],
        **settings,
    )  # fmt: skip


async def waiting_v1_run(store: Store) -> None:
    run = await v1_agent().start(store, V1(name="Ada", nickname="A"), run_id="g1")
    await run.until_done()
    assert (run.state, run.status) == ("review", "waiting")


async def test_an_old_run_is_migrated_on_resume_and_the_migration_recorded(store: Store) -> None:
    await waiting_v1_run(store)
    agent = v2_agent(state_renames={"review": "checking"})
    run = await agent.resume(store, "g1")
    assert (run.record.version, run.state, run.status) == (2, "checking", "waiting")
    assert run.memory == V2(full_name="Ada")
    migrate = (await run.history())[-1]
    assert (migrate.trigger, migrate.kind, migrate.source, migrate.dest) == (
        "migrate", "control", "review", "checking",
    )  # fmt: skip
    assert migrate.version == 2 and migrate.dropped == ["name", "nickname"]
    assert migrate.patch == {"full_name": "Ada", "language": "en"}
    assert migrate.output == {"from_version": 1, "to_version": 2, "renamed": {"review": "checking"}}
    # The history still tells the run as it was; the migrated run goes on.
    with pytest.raises(RunError, match="at seq 1 its memory had the schema of an older version"):
        await run.at(1)
    await run.send("approve")
    await run.until_done()
    assert (run.status, run.memory.greeting) == ("done", "Hi Ada")
    stored = await store.load("g1")
    assert stored is not None and set(stored.memory) == {"full_name", "greeting", "language"}
    # Resuming again migrates nothing more.
    again = await agent.resume(store, "g1")
    assert [e.trigger for e in await again.history()].count("migrate") == 1


async def test_a_run_of_a_newer_version_is_refused(store: Store) -> None:
    await waiting_v1_run(store)
    await v2_agent(state_renames={"review": "checking"}).resume(store, "g1")
    with pytest.raises(VersionMismatch, match="version 2; this is version 1, older"):
        await v1_agent().resume(store, "g1")


async def test_refused_upgrades_name_the_way_out_and_write_nothing(store: Store) -> None:
    await waiting_v1_run(store)
    before = await store.history("g1")
    with pytest.raises(RunError, match=r"in state 'review', which 'greeter' v2 does not have: "
                                       r"rename it with state_renames=\{'review': "):  # fmt: skip
        await v2_agent().resume(store, "g1")
    with pytest.raises(VersionMismatch, match="has no migration from v1"):
        await v2_agent(migrations={}, state_renames={"review": "checking"}).resume(store, "g1")

    def broken(memory: dict[str, JsonValue]) -> dict[str, JsonValue]:
        raise KeyError("full_name")

    with pytest.raises(RunError, match="the migration from v1 raised KeyError"):
        await v2_agent(migrations={1: broken}, state_renames={"review": "checking"}).resume(
            store, "g1"
        )
    with pytest.raises(InvalidMemory, match="migrated to v2: memory fails the V2 schema"):
        await v2_agent(migrations={1: lambda m: m}, state_renames={"review": "checking"}).resume(
            store, "g1"
        )
    assert await store.history("g1") == before
    stored = await store.load("g1")
    assert stored is not None and stored.version == 1 and stored.holder == ""


def test_migrations_and_renames_are_checked_when_declared() -> None:
    with pytest.raises(DefinitionError, match=r"keyed by the version they start from, 1\.\.1; 2"):
        v2_agent(migrations={2: to_v2})
    with pytest.raises(DefinitionError, match="sends 'review' to 'nowhere', which is not a state"):
        v2_agent(state_renames={"review": "nowhere"})
    with pytest.raises(DefinitionError, match="renames 'checking', which is still a state"):
        v2_agent(state_renames={"checking": "approved"})
