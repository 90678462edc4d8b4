"""Scope ledgers and set limits in the Postgres store (see `storage._capabilities.Ledger`):
tables `scope_usage`, `scope_charges` (the event keys charged, once each), `scope_held` (the
requests in flight, `reserve`) and `limits`. A
commit with a scope charge makes it in its own transaction (`charge()` in sql/)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from .._capabilities import Reservation, ScopeLedger, check_scope, scope_ledgers_of
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
        row = await self._db.call(
            f"reserve a request of scope {scope!r}",
            lambda c: c.fetchrow(
                f"SELECT o_admitted, o_used::text, o_limits::text"
                f" FROM {self._s}.reserve($1, $2, $3, $4, $5, $6)",
                check_scope(scope), period, holder,
                json.dumps({n: int(v) for n, v in limits.items()}), ttl,
                json.dumps({n: int(v) for n, v in (spent or {}).items() if v}),
            ),
        )  # fmt: skip
        used, in_force = json.loads(row[1]), json.loads(row[2])
        return Reservation(
            admitted=bool(row[0]),
            used={n: int(v) for n, v in used.items()},
            limits={n: int(v) for n, v in in_force.items()},
        )

    async def release(self, scope: str, period: str, holder: str, *, keep: int = 0) -> None:
        s = self._s
        where = (check_scope(scope), period, holder)
        if keep > 0:
            statement = (
                f"UPDATE {s}.scope_held SET requests = $4"
                " WHERE scope = $1 AND period = $2 AND holder = $3"
            )
            args: tuple[Any, ...] = (*where, int(keep))
        else:
            statement = (
                f"DELETE FROM {s}.scope_held WHERE scope = $1 AND period = $2 AND holder = $3"
            )
            args = where
        await self._db.call(
            f"release a request of scope {scope!r}", lambda c: c.execute(statement, *args)
        )

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
        charged = await self._db.call(
            f"charge scope {scope!r}",
            lambda c: c.fetchval(
                f"SELECT {self._s}.charge($1, $2, $3, $4, $5, $6)",
                check_scope(scope), period, key,
                json.dumps({n: int(v) for n, v in usage.items() if v}), expires_at, holder,
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
        return scope_ledgers_of(usage, keys)

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
