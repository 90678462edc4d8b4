"""`Store.ping`: every backend answers when it can, and a Redis that cannot be reached says why."""

from __future__ import annotations

import pytest

from storage import RedisStore, Store
from storage.errors import StoreUnavailable

from ...redis_server import free_port


async def test_a_store_that_runs_answers(store: Store) -> None:
    await store.ping(2.0)


async def test_a_redis_nobody_listens_on_says_so() -> None:
    store = RedisStore.from_url(f"redis://127.0.0.1:{free_port()}/0")
    with pytest.raises(StoreUnavailable, match="connection refused: nothing listens there"):
        await store.ping(0.5)
    await store.close()
