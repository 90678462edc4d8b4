"""Keeping one run's lease for a `Run`: taken when first needed, renewed in the background
(every third of its ttl), given back, or dropped when a commit gave it back itself."""

from __future__ import annotations

import asyncio
import time

from storage import Lease, LeaseHeld, StorageError, Store

from .errors import RunLocked, RunNotFound

__all__ = ["LeaseKeeper", "take_lease"]


async def take_lease(store: Store, run_id: str, owner: str, ttl: float, wait: float) -> Lease:
    """The run's lease, waiting up to `wait` seconds for another holder's to expire.
    Raises `RunLocked` (held by someone else) or `RunNotFound`."""
    deadline = time.time() + wait
    while True:
        try:
            got = await store.acquire_lease(run_id, owner, ttl)
        except KeyError:
            raise RunNotFound(run_id) from None
        if not isinstance(got, LeaseHeld):
            return got
        left = deadline - time.time()
        if left <= 0:
            raise RunLocked(run_id, got.owner, got.expires_in)
        await asyncio.sleep(min(max(got.expires_in, 0.01), 0.25, max(left, 0.01)))


class LeaseKeeper:
    """The lease one `Run` holds on its run, if any (`lease`)."""

    def __init__(self, store: Store, run_id: str, owner: str, ttl: float, wait: float) -> None:
        self.store = store
        self.run_id = run_id
        self.owner = owner
        self.ttl = ttl
        self.wait = wait
        self.lease: Lease | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._renewer: asyncio.Task[None] | None = None

    async def take(self) -> Lease:
        """Take the lease (waiting up to `wait` for another holder's) and keep it renewed."""
        self.keep(await take_lease(self.store, self.run_id, self.owner, self.ttl, self.wait))
        assert self.lease is not None
        return self.lease

    def keep(self, lease: Lease) -> None:
        """Hold `lease` (taken here, or by `Store.start`) and renew it in the background,
        every third of its ttl. The renewing task starts at the first renewal (a timer until
        then): most runs are given back before, and never pay for a task."""
        self.lease = lease
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(lease.ttl / 3, self._start_renewing, lease)

    def _start_renewing(self, lease: Lease) -> None:
        self._timer = None
        if self.lease is lease:
            self._renewer = asyncio.create_task(self._renew(lease), name=f"lease:{self.run_id}")

    def dropped(self) -> None:
        """The store gave the lease back (a commit that left the run not running does):
        stop renewing it, hold nothing. (Also what a process that dies holding it does.)"""
        self.lease = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._renewer is not None:
            self._renewer.cancel()
            self._renewer = None

    async def release(self, *, quiet: bool = False) -> None:
        """Give the lease back, if held; `quiet`: a store error is not raised (the lease then
        expires on its own, and the next holder counts one crash)."""
        lease = self.lease
        self.dropped()
        if lease is None:
            return
        try:
            await self.store.release_lease(lease)
        except StorageError:
            if not quiet:
                raise

    async def _renew(self, lease: Lease) -> None:
        while True:
            try:
                if not await self.store.renew_lease(lease):
                    return  # taken over; the next commit is refused and says so
            except StorageError:
                pass  # a blip; the lease is still ours until it expires
            await asyncio.sleep(lease.ttl / 3)
