"""What a `Run` holds between its commits, and how it holds the run: the record and memory
as last committed, the memory ledger (`_ledger`), the lease (`_lease`), the live channel
and the named hooks; taking the lease (and catching up with what another process committed
meanwhile), giving it back, and naming commits the store lost. The step protocol builds on
this (`_runner`), and so do commits (`_commit`), commands (`_commands`) and reads (`_reads`).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import TYPE_CHECKING, Generic, TypeVar

from pydantic import BaseModel

from storage import Lease, RunRecord, RunStatus, Store
from storage.process import owner_id

from ._hooks import ChargesHook, Hooks, LiveHook, TracingHook
from ._keys import step_key
from ._lease import LeaseKeeper
from ._ledger import Ledger
from ._live import Publisher
from .errors import CommitsLost, RunNotFound

if TYPE_CHECKING:
    from ._spec import MachineSpec

__all__ = ["RunCore"]

M = TypeVar("M", bound=BaseModel)

_log = logging.getLogger("statemachine.runner")


class RunCore(Generic[M]):
    """A run's state in this process and its lease (the base of `Run`)."""

    def __init__(
        self, machine: MachineSpec[M], store: Store, record: RunRecord, memory: M, *,
        lease_wait: float, lease: Lease | None = None,
    ) -> None:  # fmt: skip
        self.machine = machine
        self.store = store
        self.memory = memory
        self.live = Publisher(store, record.run_id)
        """Where this run's progress is published for watchers (see `watch`)."""
        charges = (ChargesHook(machine, store),) if ChargesHook.wanted(machine) else ()
        self.hooks = Hooks((LiveHook(self.live), TracingHook(), *charges))
        """The named hooks of the step protocol, in the order they run (see `_hooks`)."""
        self._record = record
        self._ledger = Ledger(store, record.run_id, record.memory, record.seq)
        owner = owner_id() if lease is None else lease.owner
        self._keeper = LeaseKeeper(store, record.run_id, owner, machine.lease_ttl, lease_wait)
        if lease is not None:  # taken with the run (`Machine.start(hold=True)`)
            self._keeper.keep(lease)
        self._told = None if lease is None else lease.acknowledged
        """Commits the store lost, as the lease taken with the run said: `_hold` names them."""
        self._announced = False
        """Whether a step began under the lease held (see `_crashes`)."""

    def __repr__(self) -> str:
        where = f"{self.state} seq={self.seq} {self.status}"
        return f"<Run {self.run_id!r} of {self.machine.name!r}: {where}>"

    @property
    def owner(self) -> str:
        """The lease owner id this run takes leases as, and names in its events."""
        return self._keeper.owner

    @owner.setter
    def owner(self, owner: str) -> None:  # a worker names itself in it (`Worker`)
        self._keeper.owner = owner

    @property
    def run_id(self) -> str:
        return self._record.run_id

    @property
    def state(self) -> str:
        return self._record.state

    @property
    def seq(self) -> int:
        return self._record.seq

    @property
    def status(self) -> RunStatus:
        return self._record.status

    @property
    def record(self) -> RunRecord:
        """The run as last committed (or loaded)."""
        return self._record

    async def idempotency_key(self, trigger: str) -> str:
        """The key every try of `trigger` out of the current state runs under (see
        `statemachine._keys`): the same after a crash, an error and `retry()`, new on the
        next visit of the state."""
        entered = self._ledger.entered
        if entered is None:  # not known since this copy was loaded: read back
            entered = await self._ledger.entered_at(self.seq)
        return step_key(self._record, entered, trigger)

    async def release(self, *, quiet: bool = False) -> None:
        """Give the run's lease back, if this process holds it."""
        await self._keeper.release(quiet=quiet)

    def _held(self) -> Lease | None:
        """The lease, when this process holds it and has nothing to catch up on (`_hold`
        without an await: every step but the first under a lease)."""
        return self._keeper.lease if self._told is None else None

    async def _hold(self) -> Lease:
        held = self._held()
        if held is not None:
            return held
        got = self._keeper.lease or await self._keeper.take()  # (one taken with the run)
        self._told = None
        self._announced = False
        acknowledged = max(self._record.seq, got.acknowledged or 0)  # here, or before us
        if got.seq is not None and got.seq < acknowledged:
            await self.release(quiet=True)
            stored = await self.store.load(self.run_id)
            if stored is not None:
                raise await self._lost(stored, acknowledged)
        if got.seq is not None and got.seq == self._record.seq:
            # Nothing was committed since this copy was read (every change is a commit, and
            # commits move the seq): only the holder and crash count are new.
            self._record = replace(self._record, holder=self.owner, crashes=got.crashes)
        else:
            # The run moved while another process held it: start from what is stored.
            await self._reload()
        if self.machine.after_commit and self.seq > 0:  # a crash may have cut the last short
            last = await self.store.history(self.run_id, self.seq, self.seq)
            for hook in self.hooks.after_commit:
                await hook.after_commit(self._record, last[0], again=True)
        return got

    async def _lost(self, stored: RunRecord, acknowledged: int) -> CommitsLost:
        """The store is behind what it acknowledged (to this process, or to one before it
        on this host: `Lease.acknowledged`): name the loss, and go back to what is stored
        (this `Run` may go on from there, as a resumed one would)."""
        lost = CommitsLost(self.run_id, stored.seq, acknowledged, stored.state)
        _log.error("%s", lost)
        await self._reload(stored)
        return lost

    async def _reload(self, stored: RunRecord | None = None) -> None:
        if stored is None:
            stored = await self.store.load(self.run_id)
        if stored is None:
            raise RunNotFound(self.run_id, lost=True)
        if stored.seq != self._record.seq or stored.memory != self._ledger.fields:
            self.memory = self.machine.validate_memory(stored.memory, f"stored run {self.run_id!r}")
            self._ledger.forget(stored.memory)
        self._record = stored
