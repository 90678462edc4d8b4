"""The round-trip rule, generated: whatever `start`, a step or `send` accepts reads back equal
through `load`, `history`, `at(seq)`, `fork` and a Redis -> embedded -> Redis export/import;
whatever would not (NaN, Infinity, nesting deeper than `storage.base.MAX_DEPTH`, lone
surrogates) is refused with an error naming the field, and nothing committed changes.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import math
import re
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, JsonValue

from agents import Agent, tool, wait
from statemachine import InvalidMemory
from statemachine.errors import InvalidPayload
from storage import EmbeddedStore, RedisStore, Store
from storage.backup import export_runs, import_runs
from storage.base import MAX_DEPTH

from ..redis_server import RedisServer

_ids = itertools.count()
REFUSAL = "not a finite number|nested more than|not Unicode text"
ROUND_TRIP = settings(deadline=None, max_examples=60, suppress_health_check=[HealthCheck.too_slow])

LEAVES = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**200), max_value=2**200)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8)
    | st.text(alphabet=st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), max_size=2)
)
JSON: st.SearchStrategy[Any] = st.recursive(
    LEAVES,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=12,
)


def nested(depth: int, leaf: Any) -> Any:
    value = leaf
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return value


VALUES = JSON | st.builds(nested, st.integers(1, 2 * MAX_DEPTH + 60), JSON)


def depth_of(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max((depth_of(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((depth_of(v) for v in value.values()), default=0)
    return 0


def storable(value: Any) -> bool:
    """The oracle: what the rule says reads back equal."""

    def leaves(v: Any) -> Any:
        if isinstance(v, list):
            for x in v:
                yield from leaves(x)
        elif isinstance(v, dict):
            for k, x in v.items():
                yield k
                yield from leaves(x)
        else:
            yield v

    if depth_of(value) > MAX_DEPTH:
        return False
    for leaf in leaves(value):
        if isinstance(leaf, float) and not math.isfinite(leaf):
            return False
        if isinstance(leaf, str) and any(0xD800 <= ord(c) <= 0xDFFF for c in leaf):
            return False
    return True


class Free(BaseModel):
    data: JsonValue = None
    got: JsonValue = None


def machine(step_value: Any) -> Agent[Free]:
    return Agent(
        name="free", memory=Free, initial="new", final=["done"], on_error="failed",
        transitions=[
            tool("put", "new", "parked", lambda m: step_value, update=lambda m, v: {"data": v}),
            wait("event", "parked", "done", payload=JsonValue, update=lambda m, v: {"got": v}),
        ],
    )  # fmt: skip


async def read_back(agent: Agent[Free], store: Store, run_id: str) -> Any:
    """Everything a reader can get of the run: the record, the events, every `at(seq)`,
    and the memory of a fork at every seq."""
    record = await store.load(run_id)
    assert record is not None
    run = await agent.resume(store, run_id)
    ats = [await run.at(seq) for seq in range(record.seq + 1)]
    forks = []
    for seq in range(record.seq + 1):
        fork = await agent.fork(store, run_id, seq, new_run_id=f"{run_id}.f{seq}")
        forks.append(fork.memory)
    return record.memory, await store.history(run_id), ats, forks


async def check(
    store: Store, redis_url: str, start: Any, step: Any, payload: Any, tmp: Path
) -> None:
    agent = machine(step)
    run_id = f"r{next(_ids)}"
    event("refused at start" if not storable(start) else "started")
    if not storable(start):
        with pytest.raises(InvalidMemory, match=f"memory field 'data'.*({REFUSAL})"):
            await agent.start(store, {"data": start}, run_id=run_id)
        assert await store.load(run_id) is None
        return
    run = await agent.start(store, {"data": start}, run_id=run_id)
    await run.until_done()
    event("step refused" if not storable(step) else "step committed")
    if not storable(step):
        assert run.status == "failed"
        [error] = [e for e in await run.history() if e.kind == "error"]
        assert error.error and re.search(REFUSAL, str(error.error["message"]))
        assert run.memory.data == start or (start != start)  # unchanged
        return
    assert run.status == "waiting"
    event("event refused" if not storable(payload) else "event committed, read back")
    if not storable(payload):
        before = await store.history(run_id)
        with pytest.raises(InvalidPayload, match=REFUSAL):
            await run.send("event", payload)
        assert await store.history(run_id) == before
        assert (await agent.resume(store, run_id)).status == "waiting"
        return
    await run.send("event", payload)
    await run.until_done()
    assert run.record.status == "done"
    assert run.memory == Free(data=step, got=payload)
    seen = await read_back(agent, store, run_id)
    assert seen[0] == {"data": step, "got": payload}
    assert [m for _, m in seen[2]] == [
        Free(data=start),
        Free(data=step),
        Free(data=step, got=payload),
    ]
    assert seen[3] == [m for _, m in seen[2]]
    # Redis -> embedded -> Redis: the copies read back the same.
    lines = [line async for line in export_runs(store, [run_id])]
    embedded = EmbeddedStore(tmp / f"{run_id}.db")
    back = RedisStore.from_url(redis_url, prefix=f"rt{next(_ids)}")
    try:
        await import_runs(embedded, io.StringIO("\n".join(lines) + "\n"))
        again = [line async for line in export_runs(embedded, [run_id])]
        await import_runs(back, again)
        for copy in (embedded, back):
            copied = await read_back(agent, copy, run_id)
            assert copied[0] == seen[0] and copied[2] == seen[2] and copied[3] == seen[3]
            assert [e.patch for e in copied[1]] == [e.patch for e in seen[1]]
            assert [e.output for e in copied[1]] == [e.output for e in seen[1]]
    finally:
        await embedded.close()
        await back.close()


@ROUND_TRIP
@given(start=VALUES, step=VALUES, payload=VALUES, on_redis=st.booleans())
@example(start=float("nan"), step=1, payload=1, on_redis=True)
@example(start=1, step=[float("inf")], payload=1, on_redis=False)
@example(start=1, step=1, payload={"x": float("-inf")}, on_redis=True)
@example(start=nested(MAX_DEPTH, 1), step=nested(MAX_DEPTH + 1, 1), payload=1, on_redis=True)
@example(start=nested(230, 1), step=1, payload=1, on_redis=False)
@example(start=2**100, step="\ud800", payload=1, on_redis=True)
@example(start={}, step=[], payload="Ünïcødé ✓ 🚀", on_redis=True)
def test_what_is_accepted_reads_back_equal_and_the_rest_is_refused(
    redis_server: RedisServer, start: Any, step: Any, payload: Any, on_redis: bool
) -> None:
    async def go() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            store: Store = (
                RedisStore.from_url(redis_server.url, prefix=f"rt{next(_ids)}")
                if on_redis
                else EmbeddedStore(Path(tmp) / "source.db")
            )
            try:
                await check(store, redis_server.url, start, step, payload, Path(tmp))
            finally:
                await store.close()

    asyncio.run(go())


async def test_the_refusal_names_the_field_and_the_place(tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path / "s.db")
    agent = machine(1)
    with pytest.raises(InvalidMemory) as caught:
        await agent.start(store, Free(data={"a": [1, float("nan")]}), run_id="r1")
    assert "memory field 'data'" in str(caught.value) and "at a[1]" in str(caught.value)
    assert "not a finite number" in str(caught.value)
    with pytest.raises(InvalidMemory, match=f"nested more than {MAX_DEPTH} levels deep"):
        await agent.start(store, Free(data=nested(MAX_DEPTH + 1, 0)), run_id="r2")
    assert await store.list_runs() == []
    await store.close()
