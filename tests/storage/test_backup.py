"""Export and import: every run and every event survives Redis -> embedded -> Redis unchanged."""

from __future__ import annotations

import io
import re
import time
from collections.abc import Sequence
from dataclasses import fields, replace
from pathlib import Path

import pytest
from pydantic import BaseModel

from agents import Agent, tool
from agents.examples import data_analyst
from agents.examples._offline import offline_model
from agents.examples.approval import approval
from storage import EmbeddedStore, Lease, RedisStore, RunRecord, Store
from storage.backup import export_runs, import_runs

from ..redis_server import RedisServer
from ..upstream import first_line

DATASET = [12.1, 11.8, 12.4, 12.0, 11.9, 12.3, 48.7, 12.2, 11.7, 12.1]


async def runs_of_every_kind(store: Store, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Done (with LLM messages and usage), failed, waiting and cancelled runs."""
    analyst = data_analyst.analyst.with_model(offline_model("analyst", data_analyst._offline_reply))
    done = await analyst.start(store, {"dataset": DATASET}, run_id="done")
    await done.until_done()
    monkeypatch.setenv("AGENTFSM_FAIL_AT", "detect")
    failed = await analyst.start(store, {"dataset": DATASET}, run_id="failed")
    await failed.until_done()
    monkeypatch.delenv("AGENTFSM_FAIL_AT")
    replier = approval.with_model(offline_model("drafter", lambda p: "Dear customer, ok."))
    waiting = await replier.start(store, {"request": "refund"}, run_id="waiting")
    await waiting.until_done()
    cancelled = await replier.start(store, {"request": "other"}, run_id="cancelled")
    await cancelled.until_done()
    await cancelled.cancel("duplicate ticket")
    assert [done.status, failed.status, waiting.status] == ["done", "failed", "waiting"]
    return ["done", "failed", "waiting", "cancelled"]


async def snapshot(store: Store, ids: list[str]) -> dict[str, object]:
    """Each run as stored, but for its holder (an export never carries a lease)."""
    runs = {i: await store.load(i) for i in ids}
    return {i: (r and replace(r, holder=""), await store.history(i)) for i, r in runs.items()}


async def copy(source: Store, target: Store, ids: Sequence[str] = ()) -> list[str]:
    lines = [line async for line in export_runs(source, ids)]
    result = await import_runs(target, io.StringIO("\n".join(lines) + "\n"))
    return result.imported


async def test_a_round_trip_redis_embedded_redis_keeps_every_run_and_event(
    redis_server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    redis = RedisStore.from_url(redis_server.url, prefix="backup-a")
    embedded = EmbeddedStore(tmp_path / "copy.db")
    back = RedisStore.from_url(redis_server.url, prefix="backup-b")
    ids = await runs_of_every_kind(redis, monkeypatch)
    original = await snapshot(redis, ids)
    assert sorted(await copy(redis, embedded)) == sorted(ids)
    assert await snapshot(embedded, ids) == original
    assert sorted(await copy(embedded, back)) == sorted(ids)
    assert await snapshot(back, ids) == original
    # The copies are live runs: the waiting one takes its event in the new store.
    replier = approval.with_model(offline_model("drafter", lambda p: "Dear customer, ok."))
    run = await replier.resume(back, "waiting")
    await run.send("review", {"verdict": "approve", "by": "ana"})
    await run.until_done()
    assert run.status == "done"
    for s in (redis, embedded, back):
        await s.close()


class Memo(BaseModel):
    n: int = 0


async def test_every_stored_field_survives_the_round_trip_but_the_lease(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """Nonce, retention expiry, crash count, deadline, memory and events come back; a run
    that was held comes back free, and taking it is not a takeover (no crash counted)."""
    kept = Agent(
        name="kept", memory=Memo, initial="a", final=["done"], retention=3600,
        transitions=[tool("go", "a", "done", lambda m: 7, into="n")],
    )  # fmt: skip
    source = RedisStore.from_url(redis_server.url, prefix="backup-c")
    embedded = EmbeddedStore(tmp_path / "fields.db")
    back = RedisStore.from_url(redis_server.url, prefix="backup-d")
    now = time.time()
    await source.create(
        RunRecord(run_id="nonced", agent="kept", version=1, state="a", seq=0, status="running",
                  memory={"n": 1}, created_at=now, updated_at=now, nonce="0f1e2d3c4b5a")
    )  # fmt: skip
    await source.acquire_lease("nonced", "someone:1:abc", 60)  # and never released
    done = await kept.start(source, Memo(), run_id="retained")
    await done.until_done()
    ids = ["nonced", "retained"]
    original = {i: await source.load(i) for i in ids}
    assert original["nonced"] and original["nonced"].holder == "someone:1:abc"
    assert original["retained"] and original["retained"].expires_at is not None
    history = {i: await source.history(i) for i in ids}
    await copy(source, embedded)
    await copy(embedded, back)
    for target in (embedded, back):
        for i in ids:
            copied = await target.load(i)
            assert copied is not None
            for f in fields(RunRecord):
                want = "" if f.name == "holder" else getattr(original[i], f.name)
                assert getattr(copied, f.name) == want, (type(target).__name__, i, f.name)
            assert await target.history(i) == history[i]
    # Redis expires the copy when the original expires; the embedded copy says so too.
    ttl = await source.client.pttl(source.key("retained", "run"))
    copied_ttl = await back.client.pttl(back.key("retained", "run"))
    assert copied_ttl > 0 and abs(ttl - copied_ttl) < 5_000
    (expiry,) = embedded.connection.execute(
        "SELECT expires_at FROM runs WHERE run_id = 'retained'"
    ).fetchone()
    assert expiry == original["retained"].expires_at
    lease = await back.acquire_lease("nonced", "me:2:def", 60)
    assert isinstance(lease, Lease) and lease.crashes == 0
    for s in (source, embedded, back):
        await s.close()


async def test_import_skips_runs_the_store_has_and_exports_chosen_runs(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = await runs_of_every_kind(store, monkeypatch)
    target = EmbeddedStore(tmp_path / "t.db")
    assert await copy(store, target, ["done"]) == ["done"]
    lines = [line async for line in export_runs(store)]
    result = await import_runs(target, lines)
    assert result.skipped == ["done"] and sorted(result.imported) == sorted(set(ids) - {"done"})
    await target.close()


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ([], "the file is empty"),
        (['{"hello": 1}'], "line 1: not an agentfsm-export file"),
        (['{"format": "agentfsm-export", "version": 9}'], "line 1: export version 9"),
        (['{"format": "agentfsm-export", "version": 1}', '{"event": {}}'],
         "line 2: an event before any run"),
        (['{"format": "agentfsm-export", "version": 1}', "not json"], "line 2: Expecting value"),
        (['{"format": "agentfsm-export", "version": 1}', '{"run": {"run_id": "x"}}'],
         f"line 2: {re.escape(first_line(RunRecord, {'run_id': 'x'}))}"),
    ],
)  # fmt: skip
async def test_a_bad_export_file_is_refused_naming_the_line(
    lines: list[str], message: str, tmp_path: Path
) -> None:
    target = EmbeddedStore(tmp_path / "t.db")
    with pytest.raises(ValueError, match=message):
        await import_runs(target, lines)
    assert await target.list_runs() == []
    await target.close()


async def test_exporting_a_run_that_does_not_exist_names_it(store: Store) -> None:
    with pytest.raises(KeyError, match="no run 'ghost' to export"):
        [line async for line in export_runs(store, ["ghost"])]


async def test_a_tenant_at_its_budget_stays_there_after_a_move_embedded_redis_embedded(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """Scope ledgers and the limits people set travel with the runs: "acme", at its budget
    of 6 requests, spends nothing more after moving embedded -> Redis -> embedded."""
    from agents import Budget

    from ..integration.cost_agent import Chat, offline_model, steps

    spender = Agent(
        name="spender", memory=Chat, model=offline_model(tmp_path, False), initial="new",
        final=["done"], scope_budget=Budget(requests=6), budget_scope=lambda m: m.tenant,
        transitions=steps(2),
    )  # fmt: skip
    first = EmbeddedStore(tmp_path / "first.db")
    for i in range(3):
        run = await spender.start(first, Chat(tenant="acme"), run_id=f"r{i}")
        await run.until_done()
        assert run.status == "done"
    assert await first.ledger.scope_usage("acme", "all") == {
        "requests": 6, "input_tokens": 210, "output_tokens": 18, "cache_read_tokens": 6,
    }  # fmt: skip
    await first.ledger.set_limits("scope/beta", {"requests": 9})
    redis = RedisStore.from_url(redis_server.url, prefix="backup-acme")
    last = EmbeddedStore(tmp_path / "last.db")
    await copy(first, redis)
    await copy(redis, last)
    for store in (redis, last):
        assert await store.ledger.scope_usage("acme", "all") == (
            await first.ledger.scope_usage("acme", "all")
        )
        assert await store.ledger.limits("scope/beta") == {"requests": 9}
        more = await spender.start(store, Chat(tenant="acme"), run_id="more")
        await more.until_done()
        assert more.status == "waiting" and more.record.usage.get("requests", 0) == 0
    for s in (first, redis, last):
        await s.close()


async def test_ledgers_both_stores_charged_since_they_parted_merge_without_double_counts(
    tmp_path: Path,
) -> None:
    source, target = EmbeddedStore(tmp_path / "s.db"), EmbeddedStore(tmp_path / "t.db")
    for store, keys in ((source, ["k1", "k2"]), (target, ["k1", "k3"])):
        for key in keys:
            await store.ledger.charge_scope("acme", "all", key, {"requests": 1}, 0)
    await source.ledger.charge_scope("acme", "day", "k9", {"requests": 4}, 0)
    lines = [line async for line in export_runs(source)]
    result = await import_runs(target, io.StringIO("\n".join(lines) + "\n"))
    assert result.diverged == ["acme@all"] and result.ledgers == 2
    assert await target.ledger.scope_usage("acme", "all") == {"requests": 2}
    assert await target.ledger.scope_usage("acme", "day") == {"requests": 4}
    again = await import_runs(target, io.StringIO("\n".join(lines) + "\n"))
    assert again.ledgers == 0  # the target has it all: nothing written, nothing counted
    await source.close()
    await target.close()
