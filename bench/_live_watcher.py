"""The watcher process of `bench/live_overhead.py`: follows one run until it is done.

    python -m bench._live_watcher STORE_URL RUN_ID

Prints "ready" once it has read the run's first item, then, when the watch ends, how many
items it saw.
"""

from __future__ import annotations

import asyncio
import sys

from statemachine.engine import watch
from storage import open_store


async def main(url: str, run_id: str) -> None:
    store = open_store(url)
    seen = 0
    async for _ in watch(store, run_id, follow=True):
        seen += 1
        if seen == 1:
            print("ready", flush=True)
    await store.close()
    print(seen, flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
