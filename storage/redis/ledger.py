"""Scope ledgers and set limits on Redis (see `storage._capabilities.Ledger`).

Keys (one hash tag per scope and period, so the charge script touches one Cluster slot;
`$` is in no run id, so no key of a run can be one of these):

    {prefix}:{$scope:<scope>:<period>}:usage     hash   u:<name> -> total
    {prefix}:{$scope:<scope>:<period>}:charged   hash   event key -> 1
    {prefix}:{$scope:<scope>:<period>}:held      hash   run id -> "<requests> <until ms>"
    {prefix}:{$limits:<subject>}                 hash   name -> limit
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .._capabilities import Reservation, ScopeLedger
from ._errors import talking
from ._indexes import glob, scope_keys, settle_pending

if TYPE_CHECKING:
    from ._base import RedisBase

__all__ = ["RedisLedger"]


class RedisLedger:
    def __init__(self, store: RedisBase) -> None:
        self._store = store

    def _limits_key(self, subject: str) -> str:
        return f"{self._store.prefix}:{{$limits:{subject}}}"

    async def scope_usage(self, scope: str, period: str) -> dict[str, int]:
        await settle_pending(self._store)  # Cluster: charges a crash left in runs' slots
        key = scope_keys(self._store.prefix, scope, period)[0]
        async with talking(self._store, "read a scope's usage", key=key):
            raw: dict[str, str] = await self._store.client.hgetall(key)
        return {k[2:]: int(v) for k, v in raw.items() if k.startswith("u:")}

    async def reserve(
        self,
        scope: str,
        period: str,
        holder: str,
        limits: Mapping[str, int],
        ttl: float,
        *,
        spent: Mapping[str, int] | None = None,
    ) -> Reservation:
        keys = scope_keys(self._store.prefix, scope, period)
        given = {name: int(v) for name, v in limits.items()}
        if self._store.standalone:
            keys.append(self._limits_key(f"scope/{scope}"))  # read by the script itself
        else:  # Cluster: the set limits are in another slot; charges a crash left, settled
            await settle_pending(self._store)
            given.update(await self.limits(f"scope/{scope}"))
        spent = {name: int(v) for name, v in (spent or {}).items() if v}
        want = spent.get("requests", 0) + 1
        args: list[Any] = [holder, want, max(int(ttl * 1000), 1), len(given)]
        for pairs in (given, spent):
            for name, value in pairs.items():
                args += [name, value]
        async with talking(self._store, f"reserve a request of scope {scope!r}", key=keys[0]):
            admitted, used, in_force = await self._store.script("reserve")(keys=keys, args=args)
        return Reservation(admitted=bool(admitted), used=_pairs(used), limits=_pairs(in_force))

    async def release(self, scope: str, period: str, holder: str, *, keep: int = 0) -> None:
        held = scope_keys(self._store.prefix, scope, period)[2]
        async with talking(self._store, f"release a request of scope {scope!r}", key=held):
            await self._store.script("release")(keys=[held], args=[holder, max(int(keep), 0)])

    async def charge_scope(
        self,
        scope: str,
        period: str,
        key: str,
        usage: Mapping[str, int],
        expires_at: float,
        *,
        holder: str = "",
    ) -> bool:
        args: list[Any] = [key, max(int(expires_at * 1000), 0), holder]
        for name, value in usage.items():
            args += [name, int(value)]
        keys = scope_keys(self._store.prefix, scope, period)
        async with talking(self._store, f"charge scope {scope!r}"):
            done = await self._store.script("scope_charge")(keys=keys, args=args)
        return bool(done)

    async def limits(self, subject: str) -> dict[str, int]:
        key = self._limits_key(subject)
        async with talking(self._store, "read limits", key=key):
            raw: dict[str, str] = await self._store.client.hgetall(key)
        return {k: int(v) for k, v in raw.items()}

    async def set_limits(self, subject: str, limits: Mapping[str, int | None]) -> None:
        key = self._limits_key(subject)
        gone = [k for k, v in limits.items() if v is None]
        kept: dict[Any, Any] = {k: int(v) for k, v in limits.items() if v is not None}
        async with talking(self._store, "set limits"):
            pipe = self._store.client.pipeline(transaction=True)
            if gone:
                pipe.hdel(key, *gone)
            if kept:
                pipe.hset(key, mapping=kept)
            await pipe.execute()

    async def all_limits(self) -> dict[str, dict[str, int]]:
        prefix = self._store.prefix
        found: dict[str, dict[str, int]] = {}
        pattern = re.compile(re.escape(prefix) + r":\{\$limits:(.+)\}")
        async with talking(self._store, "list limits"):
            keys = [k async for k in self._store.client.scan_iter(
                match=f"{glob(prefix)}:{{$limits:*}}", count=1000)]  # fmt: skip
        for key in sorted(keys):
            match = pattern.fullmatch(key)
            if match is not None:
                limits = await self.limits(match.group(1))
                if limits:
                    found[match.group(1)] = limits
        return found

    async def scope_ledgers(self) -> list[ScopeLedger]:
        await settle_pending(self._store)
        prefix = self._store.prefix
        client = self._store.client
        pattern = re.compile(re.escape(prefix) + r":\{\$scope:(.+):([^:]*)\}:usage")
        async with talking(self._store, "list scope ledgers"):
            keys = [k async for k in client.scan_iter(
                match=f"{glob(prefix)}:{{$scope:*}}:usage", count=1000)]  # fmt: skip
        ledgers = []
        for key in sorted(keys):
            match = pattern.fullmatch(key)
            if match is None:
                continue
            scope, period = match.groups()
            usage_key, charged_key, _ = scope_keys(prefix, scope, period)
            async with talking(self._store, f"read scope {scope!r}", key=usage_key):
                pipe = client.pipeline(transaction=False)
                pipe.hgetall(usage_key)
                pipe.hkeys(charged_key)
                pipe.pttl(usage_key)
                usage, charged, expiry = await pipe.execute()
            ledgers.append(
                ScopeLedger(
                    scope=scope, period=period,
                    usage={k[2:]: int(v) for k, v in usage.items() if k.startswith("u:")},
                    charged=frozenset(charged),
                    expires_at=time.time() + int(expiry) / 1000 if int(expiry) > 0 else 0.0,
                )
            )  # fmt: skip
        return ledgers

    async def put_scope_ledger(self, ledger: ScopeLedger) -> None:
        usage_key, charged_key, _ = scope_keys(self._store.prefix, ledger.scope, ledger.period)
        async with talking(self._store, f"restore scope {ledger.scope!r}"):
            pipe = self._store.client.pipeline(transaction=True)  # one slot: one hash tag
            pipe.delete(usage_key, charged_key)
            if ledger.usage:
                pipe.hset(usage_key, mapping={f"u:{k}": v for k, v in ledger.usage.items()})
            if ledger.charged:
                pipe.hset(charged_key, mapping=dict.fromkeys(sorted(ledger.charged), 1))
            if ledger.expires_at > 0:
                at = int(ledger.expires_at * 1000)
                pipe.pexpireat(usage_key, at)
                pipe.pexpireat(charged_key, at)
            await pipe.execute()


def _pairs(flat: list[Any]) -> dict[str, int]:
    """A script's reply [name, value, ...] as a dict."""
    return {str(flat[i]): int(flat[i + 1]) for i in range(0, len(flat), 2)}
