"""The Redis store's core, below its contract methods: a client bound to the running event
loop, its scripts, the key of each thing, and a run decoded from its hash. Every module of
this folder works on a `RedisBase`; `RedisStore` (`store.py`) builds the contract on it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, get_args

import redis.asyncio as aioredis
from pydantic import JsonValue
from redis.commands.core import AsyncScript

from .._acked import acknowledged
from .._codec import load_json, run_from_fields
from .._durability import PRIMARY, Durability
from ..base import RunRecord, RunStatus
from ._bound import Bound
from ._connect import Client, check_prefix, close_with_loop

__all__ = ["RedisBase"]


class RedisBase:
    """A Redis client for one key prefix (see `RedisStore`, which is one)."""

    def __init__(
        self,
        client: Client,
        *,
        prefix: str = "agentfsm",
        where: str = "redis",
        durability: Durability = PRIMARY,
    ) -> None:
        self._prefix = check_prefix(prefix)
        self._where = where
        self.durability = durability
        """What a commit waits for before it is acknowledged (`storage._durability`)."""
        self._reconnect: Callable[[], Client] | None = None
        """How to make a new client (for a new event loop): known for stores from a URL."""
        self._bound = Bound.of(client)
        self._checked = False
        self._indexes: list[str] = []
        """The index keys a commit keeps in its own script (deadlines, then runs by each
        status): on standalone Redis; on Cluster they are in other slots (none here)."""
        if not isinstance(client, aioredis.RedisCluster):
            self._indexes = [self._deadlines, *map(self._by_status, get_args(RunStatus))]
        self._acked = acknowledged()
        """Where this host notes what the store acknowledged (None: turned off)."""
        self._nonces: dict[str, str] = {}
        """The nonce of each run this process read or created: what tells it apart in the
        notes of what was acknowledged (`storage._acked`)."""
        self._statuses: dict[str, str] = {}
        """The status each run had when this process last read or wrote it (Cluster: a
        commit that may change it indexes the new status first; see `_indexes`)."""

    def _on_this_loop(self) -> Bound:
        """The client and scripts for the running event loop: a redis.asyncio client is bound
        to the loop it first connected on, so a store used from a new loop (a second
        `asyncio.run`, a notebook) gets a new client there, when it knows how to make one."""
        bound = self._bound
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return bound
        if bound.loop is not loop and bound.loop is not None and self._reconnect is not None:
            self._bound = bound = Bound.of(self._reconnect())
        if bound.loop is None:
            bound.loop = loop
            if self._reconnect is not None:  # our own client: it closes with its loop
                bound.closer = close_with_loop(bound.client)
        return bound

    @property
    def _client(self) -> Any:
        """The client of the running loop. Its replies are `Any`: with `decode_responses=True`
        they are str, which redis-py's types cannot express."""
        return self._on_this_loop().client

    def script(self, name: str) -> AsyncScript:
        """Script `scripts/<name>.lua`, registered with the client of the running loop."""
        return self._on_this_loop().script(name)

    @property
    def client(self) -> Any:
        """The `Client` of the running loop (typed `Any`: see `_client`)."""
        return self._client

    @property
    def prefix(self) -> str:
        return self._prefix

    def key(self, run_id: str, part: str) -> str:
        """The Redis key of one part ("run", "events", "keys", "lease") of a run."""
        return f"{self._prefix}:{{{run_id}}}:{part}"

    def commit_keys(self, run_id: str) -> list[str]:
        """The keys `commit` sends `commit.lua` (benchmarks send the same)."""
        return [*self._keys(run_id, "run", "events", "keys", "lease", "live"), *self._indexes]

    def _keys(self, run_id: str, *parts: str) -> list[str]:
        return [self.key(run_id, p) for p in parts]

    @property
    def _deadlines(self) -> str:
        """The sorted set of waiting runs with a deadline, scored by it."""
        return f"{self._prefix}:deadlines"

    def _by_agent(self, agent: str) -> str:
        return f"{self._prefix}:agent:{agent}"

    def _by_status(self, status: str) -> str:
        return f"{self._prefix}:status:{status}"

    @property
    def standalone(self) -> bool:
        """Whether the server is a standalone Redis (one slot space): not a Cluster."""
        return bool(self._indexes)

    def _decode_run(self, run_id: str, raw: dict[str, str], key: str) -> RunRecord:
        memory: dict[str, JsonValue] = {
            name[2:]: load_json(value, f"{key} memory field {name[2:]!r}")
            for name, value in raw.items()
            if name.startswith("m:")
        }
        run = run_from_fields(run_id, raw, memory, key)
        self._remember(run_id, run.status, run.nonce)
        return run

    def _remember(self, run_id: str, status: str, nonce: str | None = None) -> None:
        if len(self._statuses) > 100_000:
            self._statuses.clear()
            self._nonces.clear()
        self._statuses[run_id] = status
        if nonce is not None:
            self._nonces[run_id] = nonce
