"""A process that takes a rate-limit slot and is then killed holding it.

    python -m tests.storage.conformance.slot_child STORE_URL KEY

Takes the one slot of KEY (`concurrency=1`) as `owner_id():request`, prints its holder id,
and sleeps until killed.
"""

from __future__ import annotations

import asyncio
import sys

from storage import open_store
from storage._capabilities import Bucket
from storage.process import owner_id


async def main(url: str, key: str) -> None:
    store = open_store(url)
    holder = f"{owner_id()}:run-1:0:ask"
    wait, why = await store.limiter.acquire(key, Bucket(concurrency=1), holder)
    assert wait == 0, why
    print(holder, flush=True)
    await asyncio.sleep(3600)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
