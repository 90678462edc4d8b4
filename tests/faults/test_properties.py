"""Bad input, generated: random state tables, random bytes over stored runs, random event
payloads, memory over its size limit. Whatever comes in, the answer is the declared error
(or the input works), never another exception, and nothing committed changes.

Hypothesis example counts are kept small (the whole file runs in about 6 s); raise
`max_examples` in `FAST` when hunting.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import re
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, Field, JsonValue, TypeAdapter, ValidationError

from agents import Agent, tool, wait
from statemachine import DefinitionError, InvalidMemory, RunError, transition
from statemachine.engine import Transition
from statemachine.errors import InvalidPayload, MemoryTooLarge, NoTransition, VersionMismatch
from storage import EmbeddedStore, RedisStore, StorageError, Store, open_store

from ..redis_server import RedisServer

_ids = itertools.count()
FAST = settings(deadline=None, max_examples=60, suppress_health_check=[HealthCheck.too_slow])


# 1. Random state tables ------------------------------------------------------------------


class Memo(BaseModel):
    n: int = 0


def always(memory: Memo) -> bool:
    return True


def never(memory: Memo) -> bool:
    return False


def nothing(memory: Memo) -> None:
    return None


@dataclass(frozen=True)
class Row:
    trigger: str
    source: str
    dest: str
    guard: str  # "", "always", "never"
    tool: bool
    max_visits: int | None
    on_error: str | None

    def build(self) -> Transition:
        guard = {"": None, "always": always, "never": never}[self.guard]
        if self.tool:
            return tool(self.trigger, self.source, self.dest, nothing, guard=guard, in_thread=False,
                        max_visits=self.max_visits, on_error=self.on_error)  # fmt: skip
        return transition(self.trigger, self.source, self.dest, guard=guard,
                          max_visits=self.max_visits, on_error=self.on_error)  # fmt: skip


@dataclass(frozen=True)
class Spec:
    rows: tuple[Row, ...]
    initial: str
    final: tuple[str, ...]
    on_error: str | None
    states: tuple[str, ...] | None

    @property
    def plain(self) -> bool:
        """No guards and no detours: the table alone decides the path."""
        return all(not r.guard and r.on_error is None for r in self.rows)


NAMES = ["s0", "s1", "s2", "s3", "done", "end", "oops"]
ODD_NAMES = ["", "two words", "9lives", "s1 ", "ünï"]


@st.composite
def specs(draw: st.DrawFn) -> Spec:
    """Mostly near-valid tables (a few states, one or two ways out of each), some mangled."""
    n = draw(st.integers(1, 4))
    inner = [f"s{i}" for i in range(n)]
    targets = st.sampled_from([*inner, "done"])
    odd = st.sampled_from(NAMES * 5 + ODD_NAMES)
    rows = []
    for i, source in enumerate(inner):
        ahead = st.sampled_from([*inner[i + 1 :], "done"])
        count = draw(st.sampled_from([1, 1, 2]))
        for j, trigger in enumerate(draw(st.permutations(["go", "next", "back", "skip"]))[:count]):
            rows.append(Row(
                trigger=trigger, source=source, dest=draw(ahead if j == count - 1 else targets),
                guard=draw(st.sampled_from(["always", "never", ""] if j < count - 1 else [""])),
                tool=draw(st.booleans()),
                max_visits=draw(st.sampled_from([None, None, None, 1, 2, 3])),
                on_error=draw(st.sampled_from([None] * 4) | targets),
            ))  # fmt: skip
    mangles = draw(st.sampled_from([0] * 6 + [1, 2]))
    for _ in range(mangles):  # odd names, odd numbers
        i = draw(st.integers(0, len(rows) - 1))
        r = rows[i]
        rows[i] = draw(st.sampled_from([
            Row(draw(odd), r.source, r.dest, r.guard, r.tool, r.max_visits, r.on_error),
            Row(r.trigger, draw(odd), r.dest, r.guard, r.tool, r.max_visits, r.on_error),
            Row(r.trigger, r.source, draw(odd), r.guard, r.tool, r.max_visits, r.on_error),
            Row(r.trigger, r.source, r.dest, r.guard, r.tool, 0, r.on_error),
            Row(r.trigger, r.source, r.dest, r.guard, r.tool, r.max_visits, draw(odd)),
        ]))  # fmt: skip
    mostly = st.sampled_from([True] * 9 + [False])
    return Spec(
        rows=tuple(rows),
        initial="s0" if draw(mostly) else draw(odd),
        final=("done",) if draw(mostly) else tuple(draw(st.lists(odd, max_size=2))),
        on_error=draw(st.sampled_from([None, None, "oops"])) if draw(mostly) else draw(odd),
        states=draw(st.none() | st.none() | st.just((*inner, "done", "oops")) | st.just(("s0",))),
    )  # fmt: skip


def declare(spec: Spec) -> Agent[Memo]:
    return Agent(
        name="random", memory=Memo, initial=spec.initial, final=list(spec.final),
        transitions=[r.build() for r in spec.rows], on_error=spec.on_error,
        states=list(spec.states) if spec.states is not None else None,
    )  # fmt: skip


LIMIT = 40
"""Transitions a generated run may commit; a model path longer than this is a loop."""


def expected_path(agent: Agent[Memo]) -> tuple[list[tuple[str, str, str]], str]:
    """The reference semantics: (trigger, kind, dest) of each event, and how it ends
    ("done", "failed", "stuck" when no guard passes, "loops" past LIMIT)."""
    table = agent.table
    state, visits = table.initial, Counter[str]()
    path: list[tuple[str, str, str]] = []
    for _ in range(LIMIT):
        if state in table.final:
            return path, "done"
        if state == table.on_error:
            return path, "failed"
        rows = table.out[state]
        fired = next((t for t in rows if t.guard is None or t.guard(Memo())), None)
        if fired is None:
            return path, "stuck"
        if fired.max_visits is not None and visits[fired.trigger] >= fired.max_visits:
            # A spent loop ends the run: past any detour, to the machine's failure state.
            path.append((fired.trigger, "error", table.on_error or state))
            return path, "failed"
        visits[fired.trigger] += 1
        path.append((fired.trigger, fired.step.kind if fired.step else "move", fired.dests[0]))
        state = fired.dests[0]
    return path, "done" if state in table.final else "loops"


async def drive(agent: Agent[Memo]) -> tuple[list[tuple[str, str, str]], str]:
    store = open_store("memory://")
    run = await agent.start(store, Memo(), run_id="r")
    ending = "loops"
    try:
        for _ in range(LIMIT):
            if await run.step() is None:
                ending = run.status
                break
    except NoTransition:
        ending = "stuck"
    events = await store.history("r")
    assert [e.seq for e in events] == list(range(len(events)))
    if ending == "loops" and run.status != "running":
        ending = run.status  # it ended on the last transition allowed
    await store.close()
    return [(e.trigger, e.kind, e.dest) for e in events[1:]], ending


@settings(FAST, max_examples=300)
@given(specs())
def test_random_tables_are_refused_clearly_or_run_as_declared(spec: Spec) -> None:
    try:
        agent = declare(spec)
    except DefinitionError as exc:
        assert str(exc)
        event("refused")
        return
    path, ending = asyncio.run(drive(agent))
    event(f"ran: {ending}")
    assert (path, ending) == expected_path(agent)
    if spec.plain:  # no guards, no detours: a table the checks let through always ends
        assert ending in ("done", "failed"), (spec, path)


def test_a_spent_loop_whose_detour_leads_back_is_refused_or_ends() -> None:
    """Found by the table property: `go` may fire twice; when spent, it fails to its detour
    `a`, its own source, so it is spent again at once: the run never ends."""
    rows = [
        tool("go", "a", "b", nothing, max_visits=2, on_error="a"),
        tool("back", "b", "a", nothing, on_error="done"),
    ]
    try:
        agent = Agent(name="spin", memory=Memo, initial="a", final=["done"], transitions=rows)
    except DefinitionError:
        return  # the fix may refuse the table
    _, ending = asyncio.run(drive(agent))
    assert ending in ("done", "failed")


def test_the_reference_semantics_ends_a_spent_loop_past_its_detour() -> None:
    """The property's model agrees with the runner on the table that once spun forever."""
    rows = (
        Row("go", "a", "b", "", True, 2, "a"),
        Row("back", "b", "a", "", True, None, "done"),
    )
    spec = Spec(rows=rows, initial="a", final=("done",), on_error=None, states=None)
    agent = declare(spec)
    path, ending = expected_path(agent)
    assert ending == "failed" and path[-1] == ("go", "error", "a")
    assert asyncio.run(drive(agent)) == (path, ending)


# 2. Random bytes over a run's keys -------------------------------------------------------


class Notes(BaseModel):
    n: int = 0
    log: list[str] = []


notes = Agent(
    name="notes", memory=Notes, initial="a", final=["done"],
    transitions=[
        tool("one", "a", "b", lambda m: m.n + 1, into="n", in_thread=False),
        tool("two", "b", "done", lambda m: [*m.log, "two"], into="log", in_thread=False),
    ],
)  # fmt: skip

REDIS_TARGETS = ["m:n", "m:log", "state", "seq", "status", "version", "agent", "created_at",
                 "updated_at", "crashes", "fence", "event"]  # fmt: skip
EMBEDDED_TARGETS = ["memory:n", "memory:log", "event", "state", "seq", "status", "version",
                    "created_at", "crashes"]  # fmt: skip


async def corrupt_redis(raw: aioredis.Redis, store: RedisStore, run_id: str, target: str,
                        garbage: bytes) -> None:  # fmt: skip
    if target != "event":
        await raw.hset(store.key(run_id, "run"), target, garbage)
        return
    key = store.key(run_id, "events")
    entries: list[Any] = list(await raw.xrange(key) or [])
    await raw.delete(key)
    for i, (entry_id, fields) in enumerate(entries):
        await raw.xadd(key, {b"e": garbage} if i == len(entries) - 1 else fields, id=entry_id)


def corrupt_embedded(store: EmbeddedStore, run_id: str, target: str, garbage: bytes | str) -> None:
    db = store.connection
    if target.startswith("memory:"):
        db.execute("UPDATE memory SET json = ? WHERE run_id = ? AND name = ?",
                   (garbage, run_id, target.split(":")[1]))  # fmt: skip
    elif target == "event":
        db.execute("UPDATE events SET json = ? WHERE run_id = ? AND seq = 2", (garbage, run_id))
    else:
        db.execute(f"UPDATE runs SET {target} = ? WHERE run_id = ?", (garbage, run_id))


async def read_back(store: Store, run_id: str) -> BaseException | None:
    """Load, resume and list the run; the error, if any (re-raised when not an allowed one)."""
    try:
        await store.history(run_id)
        await notes.resume(store, run_id)
        await store.list_runs()
    except (StorageError, InvalidMemory, VersionMismatch, RunError) as exc:
        return exc
    return None


def check_named(error: BaseException | None, store: Store, run_id: str) -> None:
    """A store error names the key (Redis) or the file and the run (embedded)."""
    if not isinstance(error, StorageError):
        return
    text = str(error)
    if isinstance(store, RedisStore):
        assert store.key(run_id, "run") in text or store.key(run_id, "events") in text, text
    else:
        assert isinstance(store, EmbeddedStore)
        assert str(store.path) in text and repr(run_id) in text, text


async def corrupt_and_check(store: Store, target: str, garbage: bytes | str,
                            corrupt: Any) -> None:  # fmt: skip
    n = next(_ids)
    bad, good = f"bad{n}", f"good{n}"
    for run_id in (bad, good):
        await (await notes.start(store, Notes(), run_id=run_id)).until_done()
    good_before = (await store.load(good), await store.history(good))
    await corrupt(store, bad, target, garbage)
    first = await read_back(store, bad)
    event(type(first).__name__)
    check_named(first, store, bad)
    second = await read_back(store, bad)  # the same answer again: nothing was "repaired"
    assert type(first) is type(second) and str(first) == str(second)
    # Other runs are unaffected.
    assert (await store.load(good), await store.history(good)) == good_before
    await (await notes.resume(store, good)).until_done()


SPECIAL = [b"", b"{", b"null", b"[]", b"\x00", b'"x"', b"-1", b"1e999", b"NaN", b"{}", b'{"seq":1}']
GARBAGE = st.binary(max_size=40) | st.sampled_from([*SPECIAL, b"\xff\xfe"])
TEXT_GARBAGE = st.text(max_size=40).map(str.encode) | st.sampled_from(SPECIAL)
"""Valid UTF-8 only: other bytes in Redis are a known bug (see the xfail below)."""


@FAST
@given(target=st.sampled_from(REDIS_TARGETS), garbage=TEXT_GARBAGE)
def test_random_bytes_over_a_redis_run(
    redis_server: RedisServer, target: str, garbage: bytes
) -> None:
    async def go() -> None:
        store = RedisStore.from_url(redis_server.url, prefix=f"prop{next(_ids)}")
        raw = aioredis.Redis.from_url(redis_server.url)

        async def corrupt(s: Store, run_id: str, t: str, g: bytes) -> None:
            assert isinstance(s, RedisStore)
            await corrupt_redis(raw, s, run_id, t, g)

        try:
            await corrupt_and_check(store, target, garbage, corrupt)
        finally:
            await raw.aclose()
            await store.close()

    asyncio.run(go())


async def test_bytes_that_are_not_utf8_in_redis_are_named_corrupt(
    redis_server: RedisServer,
) -> None:
    """Found by the Redis bytes property (the falsifying example was `m:n` = b"\\x80")."""
    store = RedisStore.from_url(redis_server.url, prefix=f"prop{next(_ids)}")
    raw = aioredis.Redis.from_url(redis_server.url)
    try:
        for run_id in ("bad", "good"):
            await (await notes.start(store, Notes(), run_id=run_id)).until_done()
        await raw.hset(store.key("bad", "run"), "m:n", b"\x80")
        with pytest.raises(StorageError, match=re.escape(store.key("bad", "run"))):
            await store.load("bad")
        good = await store.load("good")
        assert good is not None and good.status == "done"  # other runs are unaffected
        try:
            listed = {r.run_id for r in await store.list_runs()}
        except StorageError as exc:  # refusing the listing is fine if it names the culprit
            assert store.key("bad", "run") in str(exc)
        else:
            assert "good" in listed
    finally:
        await raw.aclose()
        await store.close()


@FAST
@given(target=st.sampled_from(EMBEDDED_TARGETS), garbage=GARBAGE, as_text=st.booleans())
def test_random_bytes_over_an_embedded_run(target: str, garbage: bytes, as_text: bool) -> None:
    value: bytes | str = garbage.decode("latin-1") if as_text else garbage

    async def go(path: Path) -> None:
        store = EmbeddedStore(path)

        async def corrupt(s: Store, run_id: str, t: str, g: bytes | str) -> None:
            assert isinstance(s, EmbeddedStore)
            corrupt_embedded(s, run_id, t, g)

        try:
            await corrupt_and_check(store, target, value, corrupt)
        finally:
            await store.close()

    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(go(Path(tmp) / "store.db"))


# 3. Random event payloads ----------------------------------------------------------------


class Decision(BaseModel):
    approved: bool
    note: str = Field(default="", max_length=20)
    score: float = Field(default=0.5, ge=0, le=1)
    weight: float = 1.0


class Review(BaseModel):
    decision: Decision | None = None


review = Agent(
    name="review", memory=Review, initial="new", final=["closed"],
    transitions=[
        tool("open", "new", "waiting", nothing, in_thread=False),
        wait("approve", "waiting", "approved", payload=Decision, into="decision"),
        tool("close", "approved", "closed", nothing, in_thread=False),
    ],
)  # fmt: skip

json_values: st.SearchStrategy[JsonValue] = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)  # fmt: skip
decision_like = st.fixed_dictionaries(
    {},
    optional={"approved": json_values | st.booleans(), "note": json_values | st.text(max_size=25),
              "score": json_values | st.floats(), "weight": json_values | st.floats(),
              "extra": json_values},
)  # fmt: skip


@FAST
@given(
    event=st.sampled_from(["approve", "approve", "approve", "reject", "open"]),
    payload=json_values | decision_like,
)
@example(event="approve", payload={"approved": True, "weight": float("nan")})
@example(event="approve", payload={"approved": "yes", "note": "x" * 21, "score": 2})
@example(event="approve", payload={"approved": True, "weight": float("inf"), "extra": [None]})
def test_random_payloads_are_refused_with_nothing_changed_or_accepted(
    event: str, payload: JsonValue
) -> None:
    try:
        valid: Decision | None = TypeAdapter(Decision).validate_python(payload)
    except ValidationError:
        valid = None
    if valid is not None and not all(map(math.isfinite, (valid.score, valid.weight))):
        valid = None  # JSON has no NaN or Infinity: refused (the round-trip rule)

    async def go() -> None:
        store = open_store("memory://")
        run = await review.start(store, Review(), run_id="p")
        await run.until_done()
        assert (run.status, run.state) == ("waiting", "waiting")
        before = (await store.load("p"), await store.history("p"))
        try:
            await run.send(event, payload)
        except (InvalidPayload, RunError) as exc:
            hypothesis.event(f"refused: {type(exc).__name__}")
            assert event != "approve" or valid is None, exc
            assert isinstance(exc, RunError) == (event != "approve")
            assert (await store.load("p"), await store.history("p")) == before
            return
        finally:
            await run.release(quiet=True)
        assert event == "approve" and valid is not None
        hypothesis.event("accepted")
        await run.until_done()
        stored = await store.load("p")
        assert stored is not None and stored.status == "done"
        resumed = await review.resume(store, "p")
        assert resumed.memory.decision == valid

    asyncio.run(go())


# 4. Memory over the size limit -----------------------------------------------------------


def size_of(memory: Notes) -> int:
    """Bytes of the memory's fields as compact JSON (the oracle, computed independently)."""
    return sum(
        len(json.dumps(v, separators=(",", ":"), ensure_ascii=False).encode())
        for v in memory.model_dump(mode="json").values()
    )


def growing(limit: int, add: list[str]) -> Agent[Notes]:
    return Agent(
        name="grows", memory=Notes, initial="a", final=["done"], on_error="failed",
        max_memory=limit,
        transitions=[tool("grow", "a", "done", lambda m: [*m.log, *add], into="log",
                          in_thread=False)],
    )  # fmt: skip


@FAST
@given(
    limit=st.integers(1, 400),
    log=st.lists(st.text(st.characters(codec="utf-8"), max_size=30), max_size=6),
    add=st.lists(st.text(max_size=60), max_size=4),
)
def test_memory_over_the_limit_is_refused_before_writing(
    limit: int, log: list[str], add: list[str]
) -> None:
    start = Notes(log=log)
    grown = Notes(log=[*log, *add])

    async def go() -> None:
        store = open_store("memory://")
        agent = growing(limit, add)
        if size_of(start) > limit:
            with pytest.raises(MemoryTooLarge, match=f"over the limit of {limit}"):
                await agent.start(store, start, run_id="m")
            assert await store.load("m") is None and await store.list_runs() == []
            return
        run = await agent.start(store, start, run_id="m")
        await run.until_done()
        stored = await store.load("m")
        assert stored is not None
        last = (await store.history("m"))[-1]
        if size_of(grown) > limit:
            assert (stored.status, stored.state) == ("failed", "failed")
            assert stored.memory == start.model_dump(mode="json")  # nothing of the step
            assert last.kind == "error" and last.patch == {} and last.error is not None
            assert last.error["type"] == "MemoryTooLarge"
        else:
            assert (stored.status, stored.memory) == ("done", grown.model_dump(mode="json"))

    asyncio.run(go())


# A worker meets a corrupt run ------------------------------------------------------------


async def test_a_worker_parks_a_corrupt_run_instead_of_retrying_it_forever(
    redis_server: RedisServer,
) -> None:
    from statemachine import Worker

    store = RedisStore.from_url(redis_server.url, prefix=f"prop{next(_ids)}")
    try:
        await notes.submit(store, Notes(), run_id="bad")
        await notes.submit(store, Notes(), run_id="good")
        await store.client.hset(store.key("bad", "run"), "m:n", "{not json")
        attempts: list[str] = []

        class Counting(Worker):
            async def _drive(self, job: Any) -> None:
                attempts.append(job.run_id)
                await super()._drive(job)

        worker = Counting(store, [notes], heartbeat=0.1, reclaim_after=0.3, poll=0.1)
        task = asyncio.create_task(worker.run())
        queue: Any = store.queue
        give_up = time.monotonic() + 60
        while True:  # until the good run is done and the bad one parked (or the deadline)
            good = await store.load("good")
            dead: list[Any] = list(await store.client.xrange(queue.dead_letters) or [])
            if good is not None and good.status == "done" and dead:
                break
            assert not task.done(), task
            assert time.monotonic() < give_up, f"not settled in 60 s: tried {Counter(attempts)}"
            await asyncio.sleep(0.05)
        worker.stop()
        await task
        assert good.status == "done"  # other runs are unaffected
        dead = list(await store.client.xrange(queue.dead_letters) or [])
        assert await queue.pending(["notes"]) == {"notes": 0}, f"tried {Counter(attempts)}"
        assert [f["run"] for _, f in dead] == ["bad"]
        assert store.key("bad", "run") in dead[0][1]["reason"]
    finally:
        with contextlib.suppress(StorageError):
            await store.close()
