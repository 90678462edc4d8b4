"""Handing a machine's runs to whatever drives them: queueing a run or an event for the
workers (`submit`, `enqueue`, `deliver`) and firing the timeouts that are due (`fire_due`),
as `Machine`'s methods of those names call them."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel, JsonValue

from storage import RunRecord, Store

from . import _clock
from ._runner import Run, check_payload_storable
from ._spec import MachineSpec
from .errors import NotDue, RunError, RunLocked, RunNotFound, RunTakenOver

__all__ = ["deliver", "enqueue", "fire_due", "submit"]

M = TypeVar("M", bound=BaseModel)


class Machine(MachineSpec[M], Protocol[M]):
    """What handing runs on needs of a machine (`statemachine.Machine` is one)."""

    async def start(
        self, store: Store, memory: M | Mapping[str, Any], *, run_id: str | None = None
    ) -> Run[M]: ...

    async def resume(self, store: Store, run_id: str) -> Run[M]: ...

    def _open(self, store: Store, record: RunRecord, lease_wait: float | None) -> Run[M]: ...


async def fire_due(machine: Machine[M], store: Store, *, limit: int, drive: bool) -> list[str]:
    """`Machine.fire_due`: the ids of the runs it moved to their timeout state."""
    fired: list[str] = []
    for run_id in await store.due(_clock.now(), limit=limit):
        record = await store.load(run_id)
        if record is None or record.agent != machine.name or record.version != machine.version:
            continue
        run = machine._open(store, record, 0.0)
        try:
            await run.fire_timeout()
        except (RunLocked, RunTakenOver, NotDue):
            await run.release(quiet=True)
            continue
        fired.append(run_id)
        if drive:
            with contextlib.suppress(RunLocked, RunTakenOver):  # another process has it
                await run.until_done()  # releases the run in the end
        else:
            await run.release(quiet=True)
    return fired


async def submit(
    machine: Machine[M], store: Store, memory: M | Mapping[str, Any], run_id: str | None
) -> str:
    """`Machine.submit`: create (or find) the run and queue it; its id."""
    run = await machine.start(store, memory, run_id=run_id)
    await store.queue.enqueue(machine.name, run.run_id)
    return run.run_id


async def enqueue(machine: Machine[M], store: Store, run_id: str) -> None:
    """`Machine.enqueue`: queue a stored run for the workers."""
    if await store.load(run_id) is None:
        raise RunNotFound(run_id)
    await store.queue.enqueue(machine.name, run_id)


async def deliver(
    machine: Machine[M], store: Store, run_id: str, event: str, payload: JsonValue
) -> None:
    """`Machine.deliver`: check `payload` as `Run.send` would, writing nothing, then queue
    the event for a worker."""
    run = await machine.resume(store, run_id)
    waits = [
        t for rows in machine.table.out.values() for t in rows if t.trigger == event and t.waits
    ]
    if not waits:
        raise RunError(f"machine {machine.name!r} has no wait for event {event!r}")
    check_payload_storable(event, payload)
    check = getattr(waits[0].step, "check_payload", None)
    if check is not None:
        payload = check(payload)
    try:
        t, payload = run._accept(event, payload)
    except RunError:
        pass  # not waiting for it yet: the worker delivers it when it is
    else:
        await run._rehearse(t, payload)  # refuse what would break the run, writing nothing
    await store.queue.enqueue(machine.name, run.run_id, "event", event=event, payload=payload)
