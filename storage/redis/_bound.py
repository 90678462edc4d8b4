"""What the Redis store sends its scripts: a client bound to its event loop with its scripts
registered, and the run fields and arguments the scripts take."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncGenerator, Awaitable, Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript

from .._codec import dump_json
from ..base import Event, RunRecord
from ..usage import FIELD, increments
from ._connect import Client
from ._connection import HeldConnections
from ._scripts import script_text

__all__ = ["Bound", "deadline_arg", "lua_increments", "ms", "run_fields"]


@dataclass(slots=True)
class Bound:
    """A client, its scripts, and the event loop it is used on (None until first used)."""

    client: Client
    scripts: dict[str, AsyncScript]
    loop: asyncio.AbstractEventLoop | None = None
    closer: AsyncGenerator[None, None] | None = None
    held: HeldConnections | None = None
    """Connections kept for the hot path's scripts (standalone Redis; None on Cluster)."""

    @classmethod
    def of(cls, client: Client) -> Bound:
        bound = cls(client, {})
        if not isinstance(client, aioredis.RedisCluster):
            bound.held = HeldConnections(client.connection_pool)
        return bound

    def script(self, name: str) -> AsyncScript:
        """`scripts/<name>.lua`, registered with this client once."""
        found = self.scripts.get(name)
        if found is None:
            found = self.scripts[name] = self.client.register_script(script_text(name))
        return found

    def run(
        self, script: AsyncScript, keys: list[str], args: list[Any], then: Sequence[Any] = ()
    ) -> Awaitable[Any]:
        """`script(keys, args)`, on a held connection where there are some; with `then` (a
        wait), `(reply, then's reply)` (standalone Redis only: a Cluster store refuses the
        levels that wait, at open)."""
        ordinary = functools.partial(script, keys=keys, args=args)
        if self.held is None:
            return ordinary()
        return self.held.evalsha(script, keys, args, ordinary, then)


def run_fields(run: RunRecord) -> list[Any]:
    """The run hash's fields and values, flat, as `create.lua` and `restore.lua` take them."""
    fields: list[Any] = [
        "agent", run.agent, "version", run.version, "state", run.state, "seq", run.seq,
        "status", run.status, "created_at", repr(run.created_at),
        "updated_at", repr(run.updated_at), "fence", 0, "holder", run.holder,
        "crashes", run.crashes, "nonce", run.nonce,
    ]  # fmt: skip
    if run.deadline is not None:
        fields += ["deadline", repr(run.deadline)]
    if run.expires_at is not None:
        fields += ["expires_at", repr(run.expires_at)]
    if run.trace:
        fields += ["trace", run.trace]
    for name, value in run.memory.items():
        fields += [f"m:{name}", dump_json(value, f"memory field {name!r}")]
    for name, total in run.usage.items():
        fields += [f"{FIELD}{name}", total]
    return fields


def deadline_arg(deadline: float | None) -> str:
    return "" if deadline is None else repr(deadline)


def ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def lua_increments(event: Event) -> str:
    """The event's usage increments as `commit.lua` takes them: "name\\nvalue\\n..."."""
    return "".join(f"{name}\n{value}\n" for name, value in increments(event).items())
