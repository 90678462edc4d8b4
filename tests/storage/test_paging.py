"""Keyset paging of `list_runs(before=...)`, checked against every backend: the pages of a
walk together are exactly the filtered runs in `(created_at, run_id)` order, newest first,
whatever the page size, ties of creation time included, and commits during a walk neither
skip nor repeat a run."""

from __future__ import annotations

import dataclasses
import math
import random
import time

import pytest

from storage import Committed, RunRecord, RunStatus, Store, cursor_of, open_store
from storage.embedded import paging as embedded_paging
from storage.redis import paging

from .conformance.test_runs import event, leased, new_run

_AGENTS = ("alpha", "beta")
_STATUSES: tuple[RunStatus, ...] = ("running", "waiting", "done", "failed")


async def _fill(store: Store, count: int, seed: int = 7) -> list[RunRecord]:
    """`count` runs of two agents in four statuses and three states; some share a creation
    time. Returns them as stored."""
    rng = random.Random(seed)
    t0 = time.time() - 10_000
    runs = []
    for i in range(count):
        at = t0 + (i // 3 if i % 5 == 0 else i)  # every 5th run ties with a neighbour
        run = dataclasses.replace(
            new_run(f"r{i:03d}"), agent=rng.choice(_AGENTS), created_at=at, updated_at=at
        )
        await store.create(run)
        status = rng.choice(_STATUSES)
        if status != "running":
            lease = await leased(store, run.run_id)
            moved = dataclasses.replace(
                event(1, key=f"{run.run_id}:0:go", dest=rng.choice("bcd")),
                status=status,
                ended_at=at + 1,
            )
            assert isinstance(
                await store.commit(run.run_id, expected_seq=0, token=lease.token, event=moved),
                Committed,
            )
            await store.release_lease(lease)
        stored = await store.load(run.run_id)
        assert stored is not None
        runs.append(stored)
    return runs


async def _walk(store: Store, page: int, **query: object) -> list[str]:
    seen: list[str] = []
    before: tuple[float, str] = (math.inf, "")
    for _ in range(1000):  # a walk that does not move on fails, rather than hangs
        got = await store.list_runs(before=before, limit=page, **query)  # type: ignore[arg-type]
        seen += [r.run_id for r in got]
        if len(got) < page:
            return seen
        before = cursor_of(got[-1])
    raise AssertionError(f"the walk of {query} did not end: {seen[:20]}")


def _expected(runs: list[RunRecord], **query: object) -> list[str]:
    def keep(r: RunRecord) -> bool:
        if str(query.get("id_contains", "")) not in r.run_id:
            return False
        return all(
            getattr(r, name) == value
            for name, value in query.items()
            if name in ("agent", "status", "state")
        ) and r.updated_at < float(query.get("until", math.inf))  # type: ignore[arg-type]

    return [r.run_id for r in sorted(runs, key=cursor_of, reverse=True) if keep(r)]


@pytest.mark.parametrize(
    ("small_status", "sample"),
    [(5_000, 20_000), (0, 20_000), (0, 3)],
    ids=["status-read-whole", "status-walked", "text-searched-3-ids-a-call"],
)
async def test_pages_together_are_the_filtered_runs_in_creation_order(
    store: Store, small_status: int, sample: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(paging, "_SMALL_STATUS", small_status)
    monkeypatch.setattr(paging, "_SEARCH_READS", sample)  # Redis: ids id_search.lua reads a call
    runs = await _fill(store, 60)
    until = sorted(r.updated_at for r in runs)[40]
    queries: list[dict[str, object]] = [
        {}, {"agent": "alpha"}, {"status": "done"}, {"agent": "beta", "status": "waiting"},
        {"state": "c"}, {"agent": "alpha", "state": "a"}, {"until": until},
        {"status": "failed", "until": until}, {"id_contains": "1"},
        {"id_contains": "r05", "agent": "beta"}, {"id_contains": "2", "status": "done"},
        {"id_contains": "nowhere"},
    ]  # fmt: skip
    for query in queries:
        expected = _expected(runs, **query)
        for page in (1, 7, 100):
            assert await _walk(store, page, **query) == expected, (query, page)


async def test_a_run_that_commits_during_a_walk_is_listed_once(store: Store) -> None:
    runs = await _fill(store, 20)
    first = await store.list_runs(before=(math.inf, ""), limit=5)
    for run in runs:  # everything commits: their updated_at moves past every other run's
        if run.status == "running":
            lease = await leased(store, run.run_id)
            step = dataclasses.replace(event(run.seq + 1, key=f"{run.run_id}:x:go"))
            assert isinstance(
                await store.commit(run.run_id, expected_seq=run.seq, token=lease.token, event=step),
                Committed,
            )
            await store.release_lease(lease)
    rest = await _walk_from(store, cursor_of(first[-1]), 5)
    assert [r.run_id for r in first] + rest == _expected(runs)


async def _walk_from(store: Store, before: tuple[float, str], page: int) -> list[str]:
    seen: list[str] = []
    while got := await store.list_runs(before=before, limit=page):
        seen += [r.run_id for r in got]
        before = cursor_of(got[-1])
        assert len(seen) < 1000, "the walk did not end"
    return seen


async def test_id_contains_alone_walks_from_the_top(store: Store) -> None:
    runs = await _fill(store, 12)
    got = [r.run_id for r in await store.list_runs(id_contains="r01")]
    assert got == _expected(runs, id_contains="r01")


async def test_a_page_below_the_oldest_run_is_empty(store: Store) -> None:
    runs = await _fill(store, 5)
    oldest = min(runs, key=cursor_of)
    assert await store.list_runs(before=cursor_of(oldest)) == []
    assert await store.list_runs(before=(math.inf, ""), limit=0) == []


def test_an_older_embedded_file_gets_the_page_indexes(tmp_path: object) -> None:
    path = f"{tmp_path}/store.db"
    store = open_store(f"sqlite:///{path}")
    db = store.connection  # type: ignore[attr-defined]
    for name in ("runs_page", "runs_page_by_agent", "runs_page_by_status"):
        db.execute(f"DROP INDEX {name}")
    reopened = open_store(f"sqlite:///{path}")
    names = {
        n for (n,) in reopened.connection.execute(  # type: ignore[attr-defined]
            "SELECT name FROM sqlite_master WHERE type = 'index'"
        )
    }  # fmt: skip
    assert {"runs_page", "runs_page_by_agent", "runs_page_by_status"} <= names
    plan = " ".join(
        str(row)
        for row in reopened.connection.execute(  # type: ignore[attr-defined]
            "EXPLAIN QUERY PLAN " + embedded_paging.page_query(
                "SELECT run_id FROM runs", agent="a", status=None, state=None, since=None,
                until=None, before=(math.inf, ""), limit=10,
            )[0],
            ("x", "", "a", 10),
        )
    )  # fmt: skip
    assert "runs_page_by_agent" in plan and "TEMP B-TREE" not in plan
