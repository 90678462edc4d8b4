"""Counting the round trips a `RedisStore` makes to a real redis-server.

A round trip is one write of commands to the socket followed by reading their replies: one
command, or one whole pipeline. Counted on the store's connections (redis-py's own connection
class, subclassed), so nothing of ours is stubbed. Install it before the store's first command.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from storage import RedisStore

__all__ = ["Wire", "count_round_trips"]


@dataclass(kw_only=True)
class Wire:
    round_trips: int = 0
    commands: int = 0
    """Replies read: one per command sent, pipelined or not."""

    def take(self) -> int:
        """The round trips since the last `take`."""
        got, self.round_trips, self.commands = self.round_trips, 0, 0
        return got


def count_round_trips(store: RedisStore, names: list[str] | None = None) -> Wire:
    """Count what `store` sends from now on; it must not have opened a connection yet.
    `names`: where to append the name of each command sent alone (not pipelined)."""
    client: Any = store.client
    pool = client.connection_pool
    if getattr(pool, "_in_use_connections", None) or getattr(pool, "_available_connections", ()):
        raise RuntimeError("count_round_trips: install it before the store's first command")
    wire = Wire()
    base = pool.connection_class

    class Counting(base):  # type: ignore[misc, valid-type]
        async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
            wire.round_trips += 1
            await super().send_packed_command(command, check_health)

        async def send_command(self, *args: Any, **kwargs: Any) -> None:
            if names is not None:
                names.append(str(args[0]))
            await super().send_command(*args, **kwargs)

        async def read_response(self, *args: Any, **kwargs: Any) -> Any:
            wire.commands += 1
            return await super().read_response(*args, **kwargs)

    pool.connection_class = Counting
    return wire
