"""A scope charge made by the commit itself (`Store.commit(..., scope_charge=)`).

A budget scope's ledger (`_ledger`) is charged each committed event's usage once, by the
event's key. Where the store can, that charge is part of the commit's own atomic write, so
no crash can come between the two: embedded (sqlite, memory://), in the commit's
transaction; standalone Redis, in `commit.lua` (the scope's keys are passed as its last two
KEYS: cross-slot is fine there). On Redis Cluster the scope's keys are in another slot than
the run's, so the charge is made after the commit (`Machine.after_commit`) and again when a
process picks the run up: `charges_in_commit` says which.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ._ledger import check_scope

if TYPE_CHECKING:
    from .base import Store

__all__ = ["ScopeCharge", "charge_rows", "charges_in_commit"]


@dataclass(frozen=True, kw_only=True, slots=True)
class ScopeCharge:
    """What a commit also adds to a budget scope's ledger: the committed event's usage
    increments, to `scope`'s totals for `period`, once per event key (a key charged before,
    after a commit or by another commit, is not charged again). The ledger may forget the
    period after `expires_at` (unix seconds; 0 for never). Not stored in the history."""

    scope: str
    period: str
    expires_at: float = 0.0

    def __post_init__(self) -> None:
        check_scope(self.scope)


def charges_in_commit(store: Store) -> bool:
    """Whether `store.commit` takes a `scope_charge=` (embedded, standalone Redis)."""
    from .embedded import EmbeddedStore
    from .redis import RedisStore

    if isinstance(store, RedisStore):
        return store.standalone
    return isinstance(store, EmbeddedStore)


def charge_rows(
    db: sqlite3.Connection, charge: ScopeCharge, key: str, usage: Mapping[str, int]
) -> bool:
    """Charge `usage` under `key` in the open transaction of `db`; False when `key` was
    charged before (nothing written)."""
    added = db.execute(
        "INSERT INTO scope_charges VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
        (charge.scope, charge.period, key, charge.expires_at),
    )
    if added.rowcount != 1:
        return False
    db.executemany(
        "INSERT INTO scope_usage VALUES (?, ?, ?, ?) ON CONFLICT (scope, period, name)"
        " DO UPDATE SET value = value + excluded.value",
        [(charge.scope, charge.period, name, int(v)) for name, v in usage.items()],
    )
    return True
