"""Scope ledgers and set limits in the Postgres store (see `storage._capabilities.Ledger`):
tables `scope_usage`, `scope_charges` (the event keys charged, once each) and `limits`. A
commit with a scope charge makes it in its own transaction (`charge()` in sql/)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from .._capabilities import ScopeLedger, check_scope
from ._connections import Connections

__all__ = ["PostgresLedger"]


class PostgresLedger:
    def __init__(self, db: Connections, schema: str) -> None:
        self._db = db
        self._s = schema

    async def scope_usage(self, scope: str, period: str) -> dict[str, int]:
        rows = await self._db.call(
            "read a scope's usage",
            lambda c: c.fetch(
                f"SELECT name, value FROM {self._s}.scope_usage WHERE scope = $1 AND period = $2",
                check_scope(scope), period,
            ),
        )  # fmt: skip
        return {str(r["name"]): int(r["value"]) for r in rows}

    async def scope_state(self, scope: str, period: str) -> tuple[dict[str, int], dict[str, int]]:
        s = self._s
        row = await self._db.call(
            "read a scope's usage and limits",
            lambda c: c.fetchrow(
                f"SELECT (SELECT coalesce(jsonb_object_agg(name, value), '{{}}') FROM"
                f" {s}.scope_usage WHERE scope = $1 AND period = $2)::text AS usage,"
                f" (SELECT coalesce(jsonb_object_agg(name, value), '{{}}') FROM {s}.limits"
                " WHERE subject = $3)::text AS limits",
                check_scope(scope), period, f"scope/{scope}",
            ),
        )  # fmt: skip
        usage, limits = json.loads(row["usage"]), json.loads(row["limits"])
        return {k: int(v) for k, v in usage.items()}, {k: int(v) for k, v in limits.items()}

    async def charge_scope(
        self, scope: str, period: str, key: str, usage: Mapping[str, int], expires_at: float
    ) -> bool:
        charged = await self._db.call(
            f"charge scope {scope!r}",
            lambda c: c.fetchval(
                f"SELECT {self._s}.charge($1, $2, $3, $4, $5)",
                check_scope(scope), period, key,
                json.dumps({n: int(v) for n, v in usage.items() if v}), expires_at,
            ),
        )  # fmt: skip
        return bool(charged)

    async def limits(self, subject: str) -> dict[str, int]:
        rows = await self._db.call(
            "read limits",
            lambda c: c.fetch(
                f"SELECT name, value FROM {self._s}.limits WHERE subject = $1", subject
            ),
        )
        return {str(r["name"]): int(r["value"]) for r in rows}

    async def set_limits(self, subject: str, limits: Mapping[str, int | None]) -> None:
        kept = {n: int(v) for n, v in limits.items() if v is not None}
        gone = [n for n, v in limits.items() if v is None]
        s = self._s

        async def write(c: Any) -> None:
            async with c.transaction():
                await c.execute(
                    f"DELETE FROM {s}.limits WHERE subject = $1 AND name = ANY ($2::text[])",
                    subject, gone,
                )  # fmt: skip
                await c.execute(
                    f"INSERT INTO {s}.limits SELECT $1, t.n, t.v FROM unnest($2::text[],"
                    " $3::bigint[]) AS t (n, v) ON CONFLICT (subject, name)"
                    " DO UPDATE SET value = excluded.value",
                    subject, list(kept), list(kept.values()),
                )  # fmt: skip

        await self._db.call("set limits", write)

    async def all_limits(self) -> dict[str, dict[str, int]]:
        rows = await self._db.call(
            "list limits",
            lambda c: c.fetch(
                f"SELECT subject, name, value FROM {self._s}.limits ORDER BY subject, name"
            ),
        )
        found: dict[str, dict[str, int]] = {}
        for r in rows:
            found.setdefault(str(r["subject"]), {})[str(r["name"])] = int(r["value"])
        return found

    async def scope_ledgers(self) -> list[ScopeLedger]:
        s = self._s

        async def read(c: Any) -> tuple[list[Any], list[Any]]:
            async with c.transaction(isolation="repeatable_read", readonly=True):
                usage = await c.fetch(f"SELECT scope, period, name, value FROM {s}.scope_usage")
                keys = await c.fetch(
                    f"SELECT scope, period, key, expires_at FROM {s}.scope_charges"
                )
                return usage, keys

        usage, keys = await self._db.call("list scope ledgers", read)
        found: dict[tuple[str, str], dict[str, Any]] = {}
        for scope, period, name, value in usage:
            item = found.setdefault((scope, period), {"usage": {}, "charged": set(), "at": 0.0})
            item["usage"][str(name)] = int(value)
        for scope, period, key, expires_at in keys:
            item = found.setdefault((scope, period), {"usage": {}, "charged": set(), "at": 0.0})
            item["charged"].add(str(key))
            item["at"] = max(item["at"], float(expires_at))
        return [
            ScopeLedger(scope=scope, period=period, usage=item["usage"],
                        charged=frozenset(item["charged"]), expires_at=item["at"])
            for (scope, period), item in sorted(found.items())
        ]  # fmt: skip

    async def put_scope_ledger(self, ledger: ScopeLedger) -> None:
        check_scope(ledger.scope)
        s = self._s
        where = (ledger.scope, ledger.period)

        async def write(c: Any) -> None:
            async with c.transaction():
                for table in ("scope_usage", "scope_charges"):
                    await c.execute(
                        f"DELETE FROM {s}.{table} WHERE scope = $1 AND period = $2", *where
                    )
                await c.execute(
                    f"INSERT INTO {s}.scope_usage SELECT $1, $2, t.n, t.v FROM"
                    " unnest($3::text[], $4::bigint[]) AS t (n, v)",
                    *where, list(ledger.usage), [int(v) for v in ledger.usage.values()],
                )  # fmt: skip
                await c.execute(
                    f"INSERT INTO {s}.scope_charges SELECT $1, $2, k, $4 FROM"
                    " unnest($3::text[]) AS k",
                    *where, sorted(ledger.charged), ledger.expires_at,
                )  # fmt: skip

        await self._db.call(f"restore scope {ledger.scope!r}", write)
