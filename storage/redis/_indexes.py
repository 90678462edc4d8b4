"""The Redis store's indexes of runs, kept right through any crash, and the scope charges a
Cluster commit leaves in the run's own slot.

Indexes (sorted sets) span runs: `{prefix}:runs` and `{prefix}:agent:<agent>` by creation time,
`{prefix}:status:<status>` by when the run entered it, `{prefix}:deadlines` by deadline.

On standalone Redis the scripts keep them in the same round trip as the create or commit. On
Cluster they are in other slots than the run, so they are kept beside the script, in an
order that no crash can turn into a missing entry:

- an entry is added *before* the write that needs it (the run's create; a commit into a status
  the run did not have, a new deadline): an entry whose run never got there is harmless,
  because every reader checks each entry against its run;
- an entry is removed only *after* the commit that makes it stale (the old status, a
  deadline left), so a crash leaves at most a stale entry; `gc` drops stale entries (checking
  again after each removal, so a commit racing it keeps its entry) and `reindex` rebuilds all.

Scope charges on Cluster: the scope's ledger is in another slot than the run, so
`commit.lua` writes the charge into the run's slot, `{prefix}:{run_id}:charges` (event key ->
JSON), in the commit's own atomic write; the run's id is added to `{prefix}:charging` (a set)
before the commit. The charge is made (idempotently, by the event key:
`scripts/scope_charge.lua`) and the entry deleted right after the commit, or, after a crash,
before the next read of any scope's usage (which settles the runs in `charging` first), by
the next `load` of the run, or by `gc`: it lands exactly once, and before anyone reads it.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any, get_args

from .._capabilities import ScopeCharge, check_scope
from .._paging import RunCursor, matches
from ..base import Event, RunRecord, RunStatus
from ..errors import CorruptData
from ..usage import increments
from ._errors import talking
from .paging import redis_page

if TYPE_CHECKING:
    from ._base import RedisBase

__all__ = [
    "after_commit",
    "before_commit",
    "due",
    "gc",
    "glob",
    "index_deadline",
    "index_run",
    "list_runs",
    "page",
    "pending_charge",
    "reindex",
    "scope_keys",
    "settle_charges",
    "settle_pending",
]

log = logging.getLogger("agentfsm.storage")
_STATUSES: tuple[str, ...] = get_args(RunStatus)


def glob(text: str) -> str:
    """`text` with the characters SCAN's MATCH treats specially escaped."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


def scope_keys(prefix: str, scope: str, period: str) -> list[str]:
    """The keys of a scope's ledger for one period: its usage, its charged keys, its
    reservations (one hash tag: one Cluster slot)."""
    base = f"{prefix}:{{$scope:{check_scope(scope)}:{period}}}"
    return [f"{base}:usage", f"{base}:charged", f"{base}:held"]


async def index_run(store: RedisBase, run: RunRecord) -> None:
    async with talking(store, "index the run"):
        pipe = store.client.pipeline(transaction=False)
        pipe.zadd(f"{store.prefix}:runs", {run.run_id: run.created_at}, nx=True)
        pipe.zadd(store._by_agent(run.agent), {run.run_id: run.created_at}, nx=True)
        pipe.zadd(store._by_status(run.status), {run.run_id: run.updated_at}, nx=True)
        await pipe.execute()


async def index_deadline(store: RedisBase, run_id: str, deadline: float) -> None:
    async with talking(store, "index the deadline"):
        await store.client.zadd(store._deadlines, {run_id: deadline})


def pending_charge(charge: ScopeCharge, event: Event) -> str:
    """What a Cluster commit keeps in the run's slot for `settle_charges` (a JSON object)."""
    return json.dumps(
        {"scope": charge.scope, "period": charge.period, "expires_at": charge.expires_at,
         "usage": increments(event)}, separators=(",", ":"),
    )  # fmt: skip


async def before_commit(store: RedisBase, run_id: str, event: Event, charge: str) -> None:
    """Cluster: the entries a commit will need, added first (none in most commits: the
    status is the one this process last saw, there is no new deadline and no charge)."""
    fresh = store._statuses.get(run_id) != event.status
    if event.deadline is None and not fresh and not charge:
        return
    async with talking(store, f"index run {run_id!r}"):
        pipe = store.client.pipeline(transaction=False)
        if event.deadline is not None:
            pipe.zadd(store._deadlines, {run_id: event.deadline})
        if fresh:
            pipe.zadd(store._by_status(event.status), {run_id: event.ended_at or time.time()})
        if charge:
            pipe.sadd(_charging(store), run_id)
        await pipe.execute()


def _charging(store: RedisBase) -> str:
    """The runs whose commits may have left a scope charge in their slot (Cluster)."""
    return f"{store.prefix}:charging"


async def settle_pending(store: RedisBase) -> None:
    """Cluster: make every scope charge a crash left pending (before a scope's usage is read)."""
    if store.standalone:
        return
    async with talking(store, "settle scope charges"):
        ids: list[str] = list(await store.client.smembers(_charging(store)))
    for run_id in ids:
        key = store.key(run_id, "charges")
        async with talking(store, "settle scope charges", key=key):
            pending: dict[str, str] = await store.client.hgetall(key)
        await settle_charges(store, run_id, pending)


async def after_commit(
    store: RedisBase, run_id: str, event: Event, previous: list[Any], charge: str
) -> None:
    """Cluster: the entries the commit made stale, removed; its scope charge, made."""
    deadline, before = [*previous, "", event.status][:2]
    stale_deadline = event.deadline is None and bool(deadline)
    if stale_deadline or before != event.status:
        async with talking(store, f"index run {run_id!r}"):
            pipe = store.client.pipeline(transaction=False)
            if stale_deadline:
                pipe.zrem(store._deadlines, run_id)
            if before != event.status:
                pipe.zrem(store._by_status(before), run_id)
                pipe.zadd(store._by_status(event.status), {run_id: event.ended_at or time.time()})
            await pipe.execute()
    if charge:
        await settle_charges(store, run_id, {event.key: charge})


async def settle_charges(store: RedisBase, run_id: str, pending: dict[str, str]) -> None:
    """Make the scope charges a Cluster commit left in the run's slot, each once (by its
    event key), then delete them."""
    key = store.key(run_id, "charges")
    left = 0  # none pending: a crash came after the last one was settled
    for event_key, raw in pending.items():
        try:
            item = json.loads(raw)
            keys = scope_keys(store.prefix, str(item["scope"]), str(item["period"]))
            expiry = max(int(float(item["expires_at"]) * 1000), 0)
            args: list[Any] = [event_key, expiry, run_id]
            for name, value in dict(item["usage"]).items():
                args += [str(name), int(value)]
        except (ValueError, KeyError, TypeError):
            raise CorruptData(f"{key} field {event_key!r}", "not a pending scope charge") from None
        async with talking(store, f"charge scope {item['scope']!r}"):
            await store.script("scope_charge")(keys=keys, args=args)
            pipe = store.client.pipeline(transaction=False)  # one slot: the run's
            pipe.hdel(key, event_key)
            pipe.exists(key)
            _, left = await pipe.execute()
        if not left and not store.standalone:  # a newer commit's charge keeps it listed
            async with talking(store, "settle scope charges"):
                await store.client.srem(_charging(store), run_id)


async def page(
    store: RedisBase,
    *,
    agent: str | None,
    status: str | None,
    state: str | None,
    since: float | None,
    until: float | None,
    limit: int,
    before: RunCursor,
    id_contains: str | None,
) -> list[RunRecord]:
    return await redis_page(
        store, agent=agent, status=status, until=until, before=before, limit=limit,
        matches=lambda run: matches(run, agent, status, state, since, until),
        load=lambda ids: _load_listed(store, ids), id_contains=id_contains,
    )  # fmt: skip


async def list_runs(
    store: RedisBase,
    *,
    agent: str | None,
    status: str | None,
    state: str | None,
    since: float | None,
    until: float | None,
    limit: int,
) -> list[RunRecord]:
    """Read the narrowest index, newest first, a page at a time; check each run itself."""
    if status is not None:
        index = store._by_status(status)
    elif agent is not None:
        index = store._by_agent(agent)
    else:
        index = f"{store.prefix}:runs"
    size = max(min(limit, 10_000) * 2, 100)
    runs: list[RunRecord] = []
    start = 0
    while len(runs) < limit:
        async with talking(store, "list runs"):
            ids: list[str] = await store.client.zrange(index, start, start + size - 1, desc=True)
        if not ids:
            break
        start += size
        for run in await _load_listed(store, ids):
            if run is not None and matches(run, agent, status, state, since, until):
                runs.append(run)
    runs.sort(key=lambda r: r.updated_at, reverse=True)
    return runs[: max(limit, 0)]


async def _load_listed(store: RedisBase, ids: Sequence[str]) -> list[RunRecord | None]:
    """The runs of listed ids in one pipeline (None for one gone or corrupt)."""
    try:
        async with talking(store, "list runs"):
            pipe = store.client.pipeline(transaction=False)
            for run_id in ids:
                pipe.hgetall(store.key(run_id, "run"))
            raws: list[dict[str, str] | None] = await pipe.execute()
    except CorruptData:  # one run's bytes are bad: list the others, and say which
        raws = [await _raw_or_none(store, run_id) for run_id in ids]
    runs: list[RunRecord | None] = []
    for run_id, raw in zip(ids, raws, strict=True):
        # gone (expired: `gc` drops its index entries), or corrupt
        runs.append(store._decode_run(run_id, raw, store.key(run_id, "run")) if raw else None)
    return runs


async def _raw_or_none(store: RedisBase, run_id: str) -> dict[str, str] | None:
    key = store.key(run_id, "run")
    try:
        async with talking(store, f"load run {run_id!r}", key=key):
            raw: dict[str, str] = await store.client.hgetall(key)
    except CorruptData as exc:
        log.warning("left out of the listing: %s", exc)
        return None
    return raw


async def gc(store: RedisBase) -> int:
    """Drop index entries of runs that are gone and status entries that are stale; make
    the scope charges a crash left pending. How many entries were removed."""
    removed = 0
    client = store.client
    for index in await _index_keys(store):
        async with talking(store, "clean the indexes"):
            ids: list[str] = await client.zrange(index, 0, -1)
        status = index.removeprefix(f"{store.prefix}:status:") if ":status:" in index else None
        for start in range(0, len(ids), 1000):
            chunk = ids[start : start + 1000]
            async with talking(store, "clean the indexes"):
                pipe = client.pipeline(transaction=False)
                for run_id in chunk:
                    pipe.hget(store.key(run_id, "run"), "status")
                found: list[str | None] = await pipe.execute()
            stale = [r for r, s in zip(chunk, found, strict=True)
                     if s is None or (status is not None and s != status)]  # fmt: skip
            if not stale:
                continue
            async with talking(store, "clean the indexes"):
                await client.zrem(index, *stale)
                if status is not None:  # a commit may have moved a run in meanwhile
                    pipe = client.pipeline(transaction=False)
                    for run_id in stale:
                        pipe.hget(store.key(run_id, "run"), "status")
                    now = await pipe.execute()
                    back = {r: time.time() for r, s in zip(stale, now, strict=True) if s == status}
                    if back:
                        await client.zadd(index, back)
            removed += len(stale)
    async for key in _scan(store, f"{glob(store.prefix)}:{{*}}:charges"):
        run_id = key[len(store.prefix) + 2 : -len("}:charges")]
        async with talking(store, "settle scope charges", key=key):
            pending: dict[str, str] = await client.hgetall(key)
        await settle_charges(store, run_id, pending)
    return removed


async def reindex(store: RedisBase) -> int:
    runs = 0
    client = store.client
    for index in await _index_keys(store):
        if index != store._deadlines:
            async with talking(store, "reindex"):
                await client.delete(index)
    run_key = re.compile(re.escape(store.prefix) + r":\{([^{}]+)\}:run")
    async for key in _scan(store, f"{glob(store.prefix)}:{{*}}:run"):
        found = run_key.fullmatch(key)
        if found is None:  # `*` matched across braces: not a run's hash
            continue
        run_id = found.group(1)
        async with talking(store, "reindex"):
            kind = await client.type(key)
            raw = await client.hgetall(key) if kind == "hash" else {}
        if not raw:
            continue
        run = store._decode_run(run_id, raw, key)
        await index_run(store, run)
        if run.deadline is not None:
            await index_deadline(store, run_id, run.deadline)
        runs += 1
    return runs


async def _index_keys(store: RedisBase) -> list[str]:
    """This prefix's index keys: sorted sets named as `_by_agent` and `_by_status` name
    them (the prefix has no `:`, so no other prefix's keys start with `{prefix}:`)."""
    keys = [f"{store.prefix}:runs", store._deadlines]
    for kind in ("agent", "status"):
        found = [k async for k in _scan(store, f"{glob(store.prefix)}:{kind}:*")]
        for key in found:
            name = key[len(f"{store.prefix}:{kind}:") :]
            if "{" in name or "}" in name:
                continue
            async with talking(store, "reindex"):
                if await store.client.type(key) == "zset":
                    keys.append(key)
    return keys


async def _scan(store: RedisBase, pattern: str) -> AsyncIterator[str]:
    async with talking(store, "scan keys"):
        async for key in store.client.scan_iter(match=pattern, count=1000):
            yield key


async def due(store: RedisBase, now: float, limit: int) -> list[str]:
    """The index is kept beside the commits, not inside them (Cluster slots), so it may
    hold entries a crash left behind: each is checked against its run and dropped, or
    rescored, when the run says otherwise."""
    client = store.client
    async with talking(store, "list due runs"):
        ids: list[str] = await client.zrangebyscore(
            store._deadlines, "-inf", now, start=0, num=limit
        )
    if not ids:
        return []
    async with talking(store, "list due runs"):
        pipe = client.pipeline(transaction=False)
        for run_id in ids:
            pipe.hget(store.key(run_id, "run"), "deadline")
        stored: list[str | None] = await pipe.execute()
    found: list[str] = []
    for run_id, deadline in zip(ids, stored, strict=True):
        if deadline and float(deadline) <= now:
            found.append(run_id)
        elif deadline:
            await index_deadline(store, run_id, float(deadline))
        else:
            async with talking(store, "unindex a deadline"):
                await client.zrem(store._deadlines, run_id)
    return found
