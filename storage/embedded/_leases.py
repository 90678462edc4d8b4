"""Leases in the embedded store, as `scripts/lease.lua` keeps them on Redis: `holder` says who
took the run and did not give it back; `lease_owner` and `lease_expires` stand for the Redis
lease key and its TTL. Expiry is on the monotonic clock of this boot (`lease_boot`); a holder
provably dead on this host is taken over at once (`storage.process`: the one liveness rule).
"""

from __future__ import annotations

import sqlite3
import time

from ..base import Lease, LeaseHeld
from ..process import boot_id, provably_dead

__all__ = ["acquire", "lease_clock"]


def acquire(db: sqlite3.Connection, run_id: str, owner: str, ttl: float) -> Lease | LeaseHeld:
    """Take the lease (inside the caller's write transaction); `KeyError` for no such run."""
    row = db.execute(
        "SELECT fence, holder, crashes, lease_owner, lease_expires, lease_boot, seq FROM runs"
        " WHERE run_id = ?",
        (run_id,),
    ).fetchone()
    if row is None:
        raise KeyError(run_id)
    fence, holder, crashes, lease_owner, lease_expires, lease_boot, seq = row
    boot, now = lease_clock()
    live = lease_owner and lease_boot == boot and lease_expires > now
    if live and lease_owner == owner:  # ours already: extend it
        db.execute("UPDATE runs SET lease_expires = ? WHERE run_id = ?", (now + ttl, run_id))
        return Lease(run_id=run_id, owner=owner, token=fence, ttl=ttl, crashes=crashes, seq=seq)
    if live and not provably_dead(lease_owner):
        return LeaseHeld(run_id=run_id, owner=lease_owner, expires_in=lease_expires - now)
    if holder:  # taken, never released, expired or provably dead: its holder died
        crashes += 1
    token = fence + 1
    db.execute(
        "UPDATE runs SET fence = ?, holder = ?, crashes = ?, lease_owner = ?,"
        " lease_expires = ?, lease_boot = ? WHERE run_id = ?",
        (token, owner, crashes, owner, now + ttl, boot, run_id),
    )
    return Lease(run_id=run_id, owner=owner, token=token, ttl=ttl, crashes=crashes, seq=seq)


def lease_clock() -> tuple[str, float]:
    """The boot leases are kept in, and the time on its clock: the monotonic clock of this
    boot where the system names its boot, else ("", wall-clock time)."""
    boot = boot_id()
    return (boot, time.monotonic()) if boot else ("", time.time())
