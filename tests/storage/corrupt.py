"""Writing garbage straight into a backend, the way a bug or a person with redis-cli might."""

from __future__ import annotations

from storage import RedisStore, Store


async def corrupt_memory_field(store: Store, run_id: str, field: str, raw: str) -> str:
    """Overwrite one stored memory field with `raw`; return the key the error should name."""
    if isinstance(store, RedisStore):
        key = store.key(run_id, "run")
        await store.client.hset(key, f"m:{field}", raw)
        return key
    corrupt = getattr(store, "corrupt_for_tests", None)
    if corrupt is None:
        raise NotImplementedError(f"no way to corrupt a {type(store).__name__} in tests")
    key: str = await corrupt(run_id, "memory", field, raw)
    return key


async def corrupt_last_event(store: Store, run_id: str, raw: str) -> str:
    """Overwrite the newest event with `raw`; return the key the error should name."""
    if isinstance(store, RedisStore):
        key = store.key(run_id, "events")
        entries = await store.client.xrange(key)
        await store.client.delete(key)  # a stream's ids only grow: rebuild it with the last one bad
        for i, (entry_id, fields) in enumerate(entries):
            await store.client.xadd(key, {"e": raw} if i == len(entries) - 1 else fields, id=entry_id)
        return key
    corrupt = getattr(store, "corrupt_for_tests", None)
    if corrupt is None:
        raise NotImplementedError(f"no way to corrupt a {type(store).__name__} in tests")
    key: str = await corrupt(run_id, "event", None, raw)
    return key
