"""Durability levels on Redis: the wait sent right behind a commit, what its reply means,
and the check at open that the server can give the level (`storage._durability`); and the
notes of what was acknowledged (`storage._acked`) that tell a later lease of a loss.

`WAIT n ms` and `WAITAOF local n ms` block the connection that wrote until the write reached
`n` replicas (or the disk): a script cannot wait, so the store sends the wait behind the
`EVALSHA` on the same held connection, in the same round trip (`HeldConnections.evalsha`).
A commit answered "duplicate" wrote nothing on this connection, so its wait would not cover
the earlier write of that key: the store writes a marker of the run first (replication and
the append-only file keep writes in order: the marker reaching a replica or the disk means
everything before it did) and waits for that (`confirm`).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from redis.exceptions import NoPermissionError, RedisError

from .._durability import Durability
from ..base import Lease
from ..errors import DurabilityUnavailable, OutcomeUnknown

if TYPE_CHECKING:
    from ._base import RedisBase

__all__ = [
    "behind",
    "check_level",
    "compared",
    "confirm",
    "noted",
    "outcome_unknown",
    "unreached",
    "wait_command",
]

log = logging.getLogger("agentfsm.storage")
WAITAOF_SINCE = (7, 2)
"""The first Redis version with `WAITAOF`."""


def wait_command(level: Durability) -> tuple[Any, ...]:
    """The command that waits for `level` (() for the default level: nothing to wait for)."""
    ms = max(1, round(level.timeout * 1000))
    if level.level == "replicas":
        return ("WAIT", level.replicas, ms)
    if level.level == "fsync":
        return ("WAITAOF", 1, 0, ms)
    if level.level == "replicas-fsync":
        return ("WAITAOF", 0, level.replicas, ms)
    return ()


def unreached(level: Durability, reply: Any) -> str | None:
    """None when the wait's `reply` says `level` was reached, else what was reached."""
    if isinstance(reply, Exception):
        return f"the wait was refused ({reply})"
    if level.level == "replicas":
        got = int(reply)
        return None if got >= level.replicas else f"{got} of {level.replicas} replicas had it"
    local, replicas = (int(n) for n in reply)
    if level.level == "fsync":
        return None if local >= 1 else "the primary had not written it to disk"
    if replicas >= level.replicas:
        return None
    return f"{replicas} of {level.replicas} replicas had written it to disk"


def outcome_unknown(store: RedisBase, what: str, reply: Any) -> OutcomeUnknown | None:
    """`OutcomeUnknown` for a write `what` whose wait replied `reply`, unless it reached the
    store's level."""
    level = store.durability
    reached = unreached(level, reply)
    if reached is None:
        return None
    return OutcomeUnknown(f"{what} at {store._where}", str(level), reached, level.timeout)


async def confirm(store: RedisBase, run_id: str, what: str) -> None:
    """Wait for the store's level over whatever this run's keys hold now (a commit answered
    "duplicate": its write was made earlier, maybe on a connection that is gone)."""
    held = store._on_this_loop().held
    assert held is not None  # standalone: a Cluster store refuses waiting levels at open
    marker = store.key(run_id, "synced")
    _, waited = await held.send(("SET", marker, "1", "PX", 60_000), wait_command(store.durability))
    unknown = outcome_unknown(store, what, waited)
    if unknown is not None:
        raise unknown


async def check_level(store: RedisBase, info: dict[str, Any]) -> None:
    """`DurabilityUnavailable` when the server (its `INFO server` and `INFO persistence`
    merged in `info`) cannot give the store's level, naming both; a warning when it has
    fewer replicas connected than the level waits for."""
    level = store.durability
    if not level.waits:
        return
    version = str(info.get("redis_version", "?"))
    said = f"Redis {version} at {store._where}"
    if not store.standalone:
        raise DurabilityUnavailable(
            f"durability {str(level)!r} is not available on a Redis Cluster yet ({said}):"
            " open the store at the default level (primary), or use Redis behind Sentinel"
            " (redis+sentinel://)"
        )
    if level.needs_aof and _version(version) < WAITAOF_SINCE:
        raise DurabilityUnavailable(
            f"durability {str(level)!r} needs WAITAOF (Redis 7.2 or later); {said} does not"
            " have it: upgrade the server, or use replicas:N (WAIT), which it has"
        )
    if level.level == "fsync" and str(info.get("aof_enabled", "0")) != "1":
        raise DurabilityUnavailable(
            f"durability 'fsync' needs the append-only file, and {said} has appendonly no:"
            " set appendonly yes (CONFIG SET appendonly yes, and in redis.conf)"
        )
    if level.level == "fsync":
        try:
            fsync = (await store.client.config_get("appendfsync")).get("appendfsync")
        except RedisError:  # CONFIG denied to this user: nothing to say
            fsync = None
        if fsync not in (None, "always"):
            log.warning(
                "Redis at %s has appendfsync %s: durability 'fsync' makes each commit wait"
                " for its next fsync (up to a second; raise ?durability_timeout= above 1);"
                " with appendfsync always it waits for nothing more",
                store._where, fsync,
            )  # fmt: skip
    if level.replicas:
        try:
            replication = await store.client.info("replication")
        except NoPermissionError:
            return
        except RedisError:
            return
        connected = int(replication.get("connected_slaves", 0))
        if replication.get("role") == "slave":
            raise DurabilityUnavailable(
                f"{said} is a replica: a store writes to the primary (point the URL at it, or"
                " use redis+sentinel://)"
            )
        if connected < level.replicas:
            log.warning(
                "Redis at %s has %d replicas connected; durability %r waits for %d: commits"
                " will end with OutcomeUnknown until enough are connected",
                store._where, connected, str(level), level.replicas,
            )  # fmt: skip


def _version(text: str) -> tuple[int, int]:
    parts = [*text.split("."), "0", "0"][:2]
    try:
        return int(parts[0]), int(parts[1])
    except ValueError:
        return (0, 0)


def noted(store: RedisBase, run_id: str, seq: int) -> None:
    """Note that `seq` of the run was acknowledged (`storage._acked`)."""
    if store._acked is not None:
        store._acked.note(run_id, store._nonces.get(run_id, ""), seq)


def behind(store: RedisBase, run_id: str, seq: int) -> None:
    """A refused commit found the run at `seq`: if this host noted a later seq, the
    process that sent it names the loss now (the runner compares the stored seq with its
    own), so the note goes back to `seq` and no later lease says it again."""
    if store._acked is None:
        return
    nonce = store._nonces.get(run_id, "")
    last = store._acked.last(run_id, nonce)
    if last is not None and last > seq:
        store._acked.note(run_id, nonce, seq)


def compared(store: RedisBase, lease: Any, seq: int | None) -> Any:
    """`lease` (a `Lease` or not), saying `acknowledged` when this host noted a later seq of
    the run than the stored `seq`: those commits were lost. The note goes back to `seq`, so
    the loss is said once."""
    if not isinstance(lease, Lease) or seq is None or store._acked is None:
        return lease
    nonce = store._nonces.get(lease.run_id, "")
    last = store._acked.last(lease.run_id, nonce)
    if last is None or last <= seq:
        return lease
    store._acked.note(lease.run_id, nonce, seq)
    return replace(lease, acknowledged=last)
