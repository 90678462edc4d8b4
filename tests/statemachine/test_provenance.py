"""Memory as a database: `memory_at` replays a run's patches, `why` says who wrote a field.

Real agents (tool, llm, wait steps, a failure and its retry) run on every store; after each
commit the live memory is recorded and the replay must give it back exactly.
"""

from __future__ import annotations

import pytest
from pydantic import BaseModel, JsonValue

from agents import Agent, llm, tool, wait
from agents.examples._offline import offline_model
from statemachine._provenance import Provenance, Snapshot, memory_at, why
from storage import Event, Store

from ..keys import plain


class Notes(BaseModel):
    topic: str
    words: int = 0
    summary: str = ""
    log: list[str] = []
    approved_by: str = ""
    untouched: dict[str, int] = {"a": 1}


class Approval(BaseModel):
    by: str


def count_words(memory: Notes) -> int:
    return len(memory.topic.split())


def add_note(memory: Notes) -> str:
    return f"summary has {len(memory.summary)} chars"


class Flaky:
    """Fails on its first call, then multiplies the word count (a second write of `words`)."""

    def __init__(self) -> None:
        self.calls = 0

    def recount(self, memory: Notes) -> int:
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("flaky service down")
        return memory.words * 10


def make_agent(flaky: Flaky) -> Agent[Notes]:
    writer = offline_model("writer", lambda prompt: f"short summary of: {prompt}")
    editor = offline_model("editor", lambda prompt: "revised: " + prompt[-20:])
    return Agent(
        name="notes_provenance", memory=Notes, model=writer, initial="new", final=["done"],
        transitions=[
            tool("count", "new", "counted", count_words, into="words", in_thread=False),
            llm("summarize", "counted", "summarized", into="summary",
                prompt=lambda m: f"Summarize {m.topic}"),
            tool("note", "summarized", "noted", add_note, in_thread=False,
                 update=lambda m, v: {"log": [*m.log, v], "words": m.words + 1}),
            tool("recount", "noted", "checked", flaky.recount, into="words", in_thread=False),
            wait("approve", "checked", "approved", payload=Approval,
                 update=lambda m, p: {"approved_by": p.by}),
            llm("revise", "approved", "done", into="summary", model=editor,
                prompt=lambda m: f"Revise {m.summary}"),
        ],
    )  # fmt: skip


Seen = list[tuple[int, str, dict[str, JsonValue]]]


async def drive(store: Store, run_id: str) -> tuple[Agent[Notes], Seen]:
    """Run the agent to the end; after each commit record (seq, state, memory), checking the
    runner's memory against what the store holds."""
    agent = make_agent(Flaky())
    run = await agent.start(store, Notes(topic="durable agent memory"), run_id=run_id)
    seen: Seen = []

    async def record() -> None:
        stored = await store.load(run_id)
        assert stored is not None
        live = run.memory.model_dump(mode="json")
        assert stored.memory == live
        assert (stored.seq, stored.state) == (run.seq, run.state)
        seen.append((run.seq, run.state, live))

    await record()
    while run.status != "done":
        if run.status == "running":
            await run.step()
        elif run.status == "failed":
            await run.retry()
        else:
            assert run.status == "waiting"
            await run.send("approve", {"by": "ada"})
        await record()
    await run.release()
    return agent, seen


async def test_memory_at_every_commit_is_the_live_memory(store: Store) -> None:
    _, seen = await drive(store, "prov-1")
    events = await store.history("prov-1")
    assert [e.seq for e in events] == [s for s, _, _ in seen] == list(range(len(events)))
    # The story: creation, count, summarize, note, recount fails, retry, recount, approve, revise.
    assert [e.kind for e in events] == [
        "start", "tool", "llm", "tool", "error", "control", "tool", "wait", "llm",
    ]  # fmt: skip
    assert events[0].patch == seen[0][2]  # seq 0 holds the whole initial memory
    for seq, state, memory in seen:
        assert memory_at(events, seq) == (state, memory), f"seq {seq}"
    # Replaying does not touch the events.
    assert memory_at(events, 0)[1]["words"] == 0
    assert events[0].patch["words"] == 0


async def test_memory_at_from_a_snapshot_reads_only_later_events(store: Store) -> None:
    _, seen = await drive(store, "prov-2")
    events = await store.history("prov-2")
    record = await store.load("prov-2")
    assert record is not None
    for k in (0, 3, 5):
        base = _snapshot(events, k)
        later = await store.history("prov-2", k + 1)
        for seq, want_state, want_memory in seen[k:]:
            assert memory_at(later, seq, base=base) == (want_state, want_memory)
        # A full history given with a base: the events up to the snapshot are skipped.
        assert memory_at(events, len(events) - 1, base=base) == (record.state, record.memory)
    last = Snapshot.of(record)
    assert memory_at([], record.seq, base=last) == (record.state, record.memory)
    with pytest.raises(ValueError, match=r"seq 2 is out of range: the snapshot at seq 3"):
        memory_at(await store.history("prov-2", 4), 2, base=_snapshot(events, 3))


def _snapshot(events: list[Event], seq: int) -> Snapshot:
    state, memory = memory_at(events, seq)
    return Snapshot(seq=seq, state=state, memory=memory)


async def test_memory_at_refuses_seqs_and_histories_it_cannot_answer(store: Store) -> None:
    await drive(store, "prov-3")
    events = await store.history("prov-3")
    n = len(events) - 1
    for bad in (-1, n + 1, 10_000):
        with pytest.raises(ValueError, match=rf"seq {bad} is out of range: .*seqs 0\.\.{n}"):
            memory_at(events, bad)
    with pytest.raises(ValueError, match=r"start at seq 4, so the commits 0\.\.3 .* base=Snapshot"):
        memory_at(events[4:], 5)
    with pytest.raises(ValueError, match=r"gap .* seq 3 follows seq 1"):
        memory_at([*events[:2], *events[3:]], 4)
    with pytest.raises(ValueError, match="seq 0 is out of range: the events cover no commits"):
        memory_at([], 0)


async def test_why_names_the_llm_step_that_wrote_a_field(store: Store) -> None:
    agent, _ = await drive(store, "prov-4")
    events = await store.history("prov-4")
    p = why(events, "summary", machine=agent)
    assert isinstance(p, Provenance)
    assert p.value == p.last.value == events[-1].patch["summary"]
    assert str(p.value).startswith("revised: ")
    last = p.last
    assert (last.seq, last.trigger, last.kind) == (8, "revise", "llm")
    assert (last.source, last.dest, last.edge) == ("approved", "done", "approved -> done")
    assert last.step == last.model == "offline:editor"
    assert last.messages == tuple(events[8].messages)
    assert [m["kind"] for m in last.messages if isinstance(m, dict)] == ["request", "response"]
    assert last.usage is not None and last.usage["requests"] == 1
    assert plain(last.key) == "prov-4:7:revise"
    assert 0 < last.started_at <= last.ended_at
    assert not p.from_initial
    # Earlier writes, newest first: the first summary, then the initial "".
    assert [(w.seq, w.trigger, w.kind) for w in p.earlier] == [
        (2, "summarize", "llm"), (0, "start", "start"),
    ]  # fmt: skip
    assert p.earlier[0].model == p.earlier[0].step == "offline:writer"
    assert p.earlier[0].value == "short summary of: Summarize durable agent memory"
    assert p.earlier[1].value == "" and p.earlier[1].initial
    assert p.earlier[1].edge == "-> new" and p.earlier[1].step is None
    assert p.writes == (p.last, *p.earlier)


async def test_why_follows_a_field_through_tools_reducers_and_retries(store: Store) -> None:
    agent, seen = await drive(store, "prov-5")
    events = await store.history("prov-5")
    p = why(events, "words", machine=agent)
    assert p.value == seen[-1][2]["words"] == 40
    assert [(w.seq, w.trigger, w.kind, w.value) for w in p.writes] == [
        (6, "recount", "tool", 40),  # after the failed try (seq 4) and the retry (seq 5)
        (3, "note", "tool", 4),  # through an update= reducer
        (1, "count", "tool", 3),
        (0, "start", "start", 0),
    ]
    assert [w.step for w in p.writes] == ["recount", "add_note", "count_words", None]
    assert all(w.model is None and w.messages == () for w in p.writes)
    # The wait step's payload, through its reducer.
    approved = why(events, "approved_by", machine=agent).last
    assert (approved.seq, approved.kind, approved.trigger, approved.value) == (
        7, "wait", "approve", "ada",
    )  # fmt: skip
    # Without the agent, the events alone say everything: each records the step that ran.
    bare = why(events, "words")
    assert bare.writes == p.writes
    assert [e.step for e in events if "words" in e.patch][1:] == [
        w.step for w in reversed(p.writes) if not w.initial
    ]


async def test_why_at_an_earlier_seq_and_values_from_the_initial_memory(store: Store) -> None:
    await drive(store, "prov-6")
    events = await store.history("prov-6")
    kept = why(events, "untouched")
    assert kept.from_initial and kept.last.initial and kept.earlier == ()
    assert kept.value == {"a": 1} and kept.last.kind == "start" and kept.last.trigger == "start"
    assert "created with this value" in kept.describe()
    topic = why(events, "topic")
    assert topic.from_initial and topic.value == "durable agent memory"
    then = why(events, "words", at=2)
    assert then.at == 2 and then.value == 3 and then.last.trigger == "count"
    assert [w.seq for w in then.earlier] == [0]
    first = why(events, "summary", at=1)
    assert first.from_initial and first.value == ""
    for at in range(len(events)):
        _, memory = memory_at(events, at)
        for name, value in memory.items():
            assert why(events, name, at=at).value == value, (at, name)


async def test_why_refuses_unknown_fields_and_seqs(store: Store) -> None:
    await drive(store, "prov-7")
    events = await store.history("prov-7")
    with pytest.raises(
        ValueError,
        match=r"unknown memory field 'summry': the run's fields are approved_by, log, summary,"
        r" topic, untouched, words",
    ):
        why(events, "summry")
    with pytest.raises(ValueError, match=r"seq 99 is out of range: the events cover seqs 0\.\.8"):
        why(events, "summary", at=99)
    with pytest.raises(ValueError, match=r"commits 0\.\.1 before it are missing"):
        why(events[2:], "summary")


async def test_describe_reads_like_an_answer(store: Store) -> None:
    agent, _ = await drive(store, "prov-8")
    text = why(await store.history("prov-8"), "summary", machine=agent).describe(width=30)
    lines = text.splitlines()
    assert lines[0].startswith('summary = "revised: ') and lines[0].endswith("(at seq 8)")
    assert "…" in lines[0]
    assert lines[1] == "  written by seq 8: 'revise' [llm offline:editor] approved -> done"
    assert lines[2] == "  before that seq 2: 'summarize' [llm offline:writer] counted -> summarized"
    assert lines[4] == "  before that seq 0: creation of the run [start] -> new"
    assert lines[5] == '    value ""'
