"""Writing garbage straight into a backend, the way a bug or a person with redis-cli might."""

from __future__ import annotations

from typing import Any

from storage import EmbeddedStore, RedisStore, Store
from storage.postgres import PostgresStore

from ..postgres_server import execute


async def corrupt_memory_field(store: Store, run_id: str, field: str, raw: str) -> str:
    """Overwrite one stored memory field with `raw`; return the key the error should name."""
    if isinstance(store, RedisStore):
        key = store.key(run_id, "run")
        await store.client.hset(key, f"m:{field}", raw)
        return key
    if isinstance(store, EmbeddedStore):
        store.connection.execute(
            "UPDATE memory SET json = ? WHERE run_id = ? AND name = ?", (raw, run_id, field)
        )
        return f"{store.path} memory field {field!r} of run {run_id!r}"
    if isinstance(store, PostgresStore):
        await execute(
            store, "UPDATE {s}.memory SET json = $1 WHERE run_id = $2 AND name = $3",
            raw.encode("utf-8", "surrogateescape"), run_id, field,
        )  # fmt: skip
        return f"{store.where} memory field {field!r} of run {run_id!r}"
    raise NotImplementedError(f"no way to corrupt a {type(store).__name__} in tests")


async def corrupt_last_event(store: Store, run_id: str, raw: str) -> str:
    """Overwrite the newest event with `raw`; return the key the error should name."""
    if isinstance(store, RedisStore):
        key = store.key(run_id, "events")
        entries: list[Any] = list(await store.client.xrange(key) or [])
        await store.client.delete(key)  # a stream's ids only grow: rebuild it with the last one bad
        for i, (entry_id, fields) in enumerate(entries):
            await store.client.xadd(
                key, {"e": raw} if i == len(entries) - 1 else fields, id=entry_id
            )
        return key
    if isinstance(store, EmbeddedStore):
        (seq,) = store.connection.execute(
            "SELECT MAX(seq) FROM events WHERE run_id = ?", (run_id,)
        ).fetchone()
        store.connection.execute(
            "UPDATE events SET json = ? WHERE run_id = ? AND seq = ?", (raw, run_id, seq)
        )
        return f"{store.path} event {seq} of run {run_id!r}"
    if isinstance(store, PostgresStore):
        seq = await execute(
            store, "UPDATE {s}.events SET json = $1 WHERE run_id = $2 AND seq ="
            " (SELECT max(seq) FROM {s}.events WHERE run_id = $2) RETURNING seq",
            raw.encode(), run_id,
        )  # fmt: skip
        return f"{store.where} event {seq} of run {run_id!r}"
    raise NotImplementedError(f"no way to corrupt a {type(store).__name__} in tests")
