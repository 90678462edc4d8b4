"""Round trips and replies a redis-py client sends, counted on its connections.

A round trip is one `send_packed_command` (one command, or one whole pipeline); each reply
read back is one command. Installed on a pool before it opens a connection, for redis-py's
asyncio and sync clients alike. (Self-contained: benchmarks do not import from tests/.)
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

__all__ = ["Wire", "count_wire"]


@dataclass(kw_only=True)
class Wire:
    round_trips: int = 0
    commands: int = 0

    def reset(self) -> None:
        self.round_trips = 0
        self.commands = 0


def count_wire(pool: Any) -> Wire:
    """Count what `pool`'s connections send from now on (set before its first connection)."""
    wire = Wire()
    base = pool.connection_class
    if inspect.iscoroutinefunction(base.send_packed_command):  # redis.asyncio's (or ours)

        class AsyncCounting(base):  # type: ignore[misc, valid-type]
            async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
                wire.round_trips += 1
                await super().send_packed_command(command, check_health)

            async def read_response(self, *args: Any, **kwargs: Any) -> Any:
                wire.commands += 1
                return await super().read_response(*args, **kwargs)

        pool.connection_class = AsyncCounting
    else:

        class SyncCounting(base):  # type: ignore[misc, valid-type]
            def send_packed_command(self, command: Any, check_health: bool = True) -> None:
                wire.round_trips += 1
                super().send_packed_command(command, check_health)

            def read_response(self, *args: Any, **kwargs: Any) -> Any:
                wire.commands += 1
                return super().read_response(*args, **kwargs)

        pool.connection_class = SyncCounting
    return wire
