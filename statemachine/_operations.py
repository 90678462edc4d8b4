"""What people do to runs, one engine operation per action, each with its dry run.

    start    create the run (`Machine.start`: a run of that id that exists is returned)
    resume   drive the run on from its last commit (a failed run is retried first)
    send     deliver an event to a waiting run (`Run.send`)
    retry    put a failed run, or one a budget parked, back where it stopped (`Run.retry`)
    cancel   stop the run for good (`Run.cancel`)
    fork     a new run from a past commit of this one (`Machine.fork`)

An `Action` is one of them with its arguments. `check` says what it will commit, writing
nothing, or raises `Refused` naming why not and the way out; `operate` checks again and
does it. Python, the CLI and the web UI call
these two and nothing else, so they answer alike for every action on every run status
(`agents` adds approve/deny and raising a budget on the same terms).

An operation that leaves a run `running` (a fork's new run too) hands it to whatever drives
runs (`hand_off`): queued when live workers serve its agent; else driven on in the caller's
process if it asked (`drive=True`, as the CLI does; `resume` always, a fork never), else left
for `agentfsm resume`, with the command said. `check` says which beforehand (`Plan.then`, in
the words `Done.then` will use), so every front end shows the same sentence.
`expect_seq` makes an operation commit once however often it is asked (a form posted twice):
a run that moved past that seq by this very operation answers with what was done then.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

from pydantic import BaseModel, JsonValue

from storage.base import check_run_id

from .errors import RunError, RunNotFound

if TYPE_CHECKING:
    from storage import Event, RunRecord, Store

    from ._machine import Machine
    from ._runner import Run

__all__ = [
    "ACTIONS",
    "Action",
    "ActionName",
    "Done",
    "Plan",
    "Refused",
    "check",
    "hand_off",
    "operate",
    "workers_serve",
]

ActionName: TypeAlias = Literal["start", "resume", "send", "retry", "cancel", "fork"]
Handed: TypeAlias = Literal["none", "queue", "here", "left"]
"""How an operation hands on the run it leaves (`hand_off`)."""
ACTIONS: tuple[ActionName, ...] = ("start", "resume", "send", "retry", "cancel", "fork")
_HEARTBEAT = 2.0
"""Seconds between a worker's heartbeats (`Worker(heartbeat=)`'s default)."""


class Refused(RunError):
    """The action cannot be done on the run as it is; nothing was written. The message
    names why and the way out."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Action:
    """One action on a run, with what it needs: what `check` checks and `operate` does."""

    name: str
    """One of `ACTIONS` (another is `Refused`, naming them)."""
    event: str | None = None
    """send: the event."""
    payload: JsonValue = None
    """send: its payload."""
    reason: str = ""
    """cancel: why, recorded with it."""
    at: int | None = None
    """fork: the seq to fork at."""
    new_run_id: str | None = None
    """fork: the new run's id (None: a new one)."""
    memory_update: Mapping[str, Any] | None = None
    """fork: memory fields changed in the new run."""
    memory: BaseModel | Mapping[str, Any] | None = None
    """start: the new run's memory."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Plan:
    """What an action will do, checked against the run as stored (nothing written)."""

    action: str
    run_id: str
    seq: int
    """The run's seq when checked: `operate(..., expect_seq=plan.seq)` commits only from it."""
    commits: str
    """What it commits, in one sentence."""
    command: str
    """The CLI command that does the same."""
    retry_first: bool = False
    """`resume` of a failed run, or one a budget parked: it commits a retry first."""
    then: str = ""
    """Who drives the run on after it, in `Done.then`'s words (`hand_off`): "queued for the
    workers", "driven here", "left for `agentfsm resume ...`", or "nothing to drive: ..."."""
    handed: Handed = "none"
    """`then` as a word: "queue", "here", "left" or "none" (in `Done.plan`: as it was done)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Done:
    """What an operation did."""

    plan: Plan
    run_id: str
    """The run it leaves (for a fork: the new one)."""
    event: Event | None
    """What it committed (None: nothing, or it had been done before)."""
    status: str
    then: str
    """Who drives the run on: "queued for the workers", "driven here", "left for ..."."""
    again: bool = False
    """True when it had been done before (a form posted twice): nothing was committed now."""


def _cli(action: str, run_id: str, *words: str, **flags: Any) -> str:
    """The CLI command line of an action (flags that are None or "" left out)."""
    line = " ".join(["agentfsm", action, run_id, *words])
    for name, value in flags.items():
        if value is None or value == "":
            continue
        text = value if isinstance(value, str | int) else json.dumps(value)
        line += f" --{name} {json.dumps(text) if ' ' in str(text) else text}"
    return line


async def _halted(store: Store, record: RunRecord) -> bool:
    """Whether `record` is parked by a step's `StepHalted` (a budget)."""
    if record.status != "waiting":
        return False
    last = await store.history(record.run_id, record.seq, record.seq)
    return bool(last) and last[0].kind == "halt"


async def check(
    machine: Machine[Any], store: Store, run_id: str, action: Action, *, drive: bool = False
) -> Plan:
    """What `action` on run `run_id` will commit (see the module doc), and who drives the run
    on after it (`Plan.then`: as `operate(..., drive=drive)` will hand it on); `Refused` when
    it cannot be done, `RunNotFound`, or the error the arguments meet (`InvalidPayload`,
    `InvalidMemory`, `MemoryTooLarge`, `ValueError`). Writes nothing."""
    name = action.name
    plan, status = await _plan(machine, store, run_id, action)
    left = action.new_run_id or "NEW_RUN_ID" if name == "fork" else plan.run_id or "RUN_ID"
    handed, then = await _then(machine, store, left, status, drive=_drives(name, drive))
    return replace(plan, then=then, handed=handed)


def _drives(name: str, drive: bool) -> bool:
    """Whether `operate` drives the run it leaves running when no worker serves its agent:
    `resume` always (that is what it is for), a fork never (nothing runs until it is resumed
    or a worker takes it), the others when the caller asks (`drive`)."""
    return name == "resume" or (drive and name != "fork")


async def _plan(
    machine: Machine[Any], store: Store, run_id: str, action: Action
) -> tuple[Plan, str]:
    """`check`'s plan (without `then`) and the status the run will be left in."""
    name, event, at = action.name, action.event, action.at
    new_run_id, memory_update = action.new_run_id, action.memory_update
    if name == "start":
        return await _check_start(machine, store, run_id, action.memory)
    record = await store.load(run_id)
    if record is None:
        raise RunNotFound(run_id)
    if record.agent != machine.name:
        raise Refused(f"run {run_id!r} belongs to {record.agent!r}, not to {machine.name!r}")
    state, status, nxt = record.state, record.status, record.seq + 1

    def plan(
        commits: str, command: str, after: str = "running", retry_first: bool = False
    ) -> tuple[Plan, str]:
        return Plan(action=name, run_id=run_id, seq=record.seq, commits=commits,
                    command=command, retry_first=retry_first), after  # fmt: skip

    if name == "resume":
        if status in ("done", "cancelled"):
            raise Refused(f"run {run_id!r} is {status}: nothing to resume (fork it to go on)")
        if status == "failed" or await _halted(store, record):
            return plan(
                f"commits a 'retry' event as seq {nxt} (back to where it stopped)",
                _cli("resume", run_id), retry_first=True,
            )  # fmt: skip
        if status == "waiting":
            waits = [t.trigger for t in machine.table.out.get(state, ()) if t.waits]
            return plan(
                f"commits nothing: it waits in state {state!r} for {waits}",
                _cli("resume", run_id), after=status,
            )  # fmt: skip
        return plan(
            f"commits nothing itself: the run goes on from state {state!r} (seq {record.seq})",
            _cli("resume", run_id),
        )
    if name == "send":
        if event is None:
            raise Refused("send: name the event")
        run = await machine.resume(store, run_id)
        t, checked = run._accept(event, action.payload)  # RunError naming what it waits for
        await run._rehearse(t, checked)
        dest = t.dest or "the state its route picks"
        return plan(
            f"commits event {event!r} as seq {nxt}: {state!r} → {dest!r}, payload"
            f" {json.dumps(checked)}",
            _cli("send", run_id, event, data=f"'{json.dumps(checked)}'"),
            after=machine.status_in(t.dest) if t.dest else "running",
        )
    if name == "retry":
        if status != "failed" and not await _halted(store, record):
            raise Refused(
                f"run {run_id!r} is {status}, not failed nor parked by a budget: nothing to retry"
            )
        return plan(
            f"commits a 'retry' event as seq {nxt}: back to where it stopped, status running",
            _cli("retry", run_id),
        )
    if name == "cancel":
        if status in ("done", "cancelled"):
            raise Refused(f"run {run_id!r} is already {status}")
        return plan(
            f"commits a 'cancel' event as seq {nxt}: the run stops for good in state {state!r}"
            + (f" (reason: {action.reason})" if action.reason else ""),
            _cli("cancel", run_id, reason=action.reason), after="cancelled",
        )  # fmt: skip
    if name == "fork":
        if at is None:
            raise Refused("fork: give the seq to fork at (--at SEQ)")
        forked, _, _ = await machine.fork_plan(store, run_id, at, new_run_id=new_run_id,
                                               memory_update=memory_update)  # fmt: skip
        flags = {"at": at, "run-id": new_run_id, "set": dict(memory_update or {}) or None}
        return plan(
            f"creates a new run {new_run_id or '(a new id)'} where {run_id!r} was right after"
            f" seq {at}"
            + (f", with {sorted(memory_update)} changed" if memory_update else "")
            + "; the original stays as it is",
            _cli("fork", run_id, **flags),
            after=forked.status,
        )
    raise Refused(f"unknown action {name!r}: one of {', '.join(ACTIONS)}")


async def _check_start(
    machine: Machine[Any], store: Store, run_id: str, memory: BaseModel | Mapping[str, Any] | None
) -> tuple[Plan, str]:
    command = "agentfsm run MODULE:AGENT --input JSON" + (f" --run-id {run_id}" if run_id else "")
    existing = await store.load(check_run_id(run_id)) if run_id else None
    if existing is not None:
        if existing.agent != machine.name:
            raise Refused(
                f"run {run_id!r} exists and belongs to {existing.agent!r}, not to"
                f" {machine.name!r}: pick another run id"
            )
        return Plan(action="start", run_id=run_id, seq=existing.seq, command=command,
                    commits=f"commits nothing: run {run_id!r} exists ({existing.status} in"
                    f" state {existing.state!r}); start returns it"), existing.status  # fmt: skip
    if memory is None:
        raise Refused("start: give the run's memory")
    fields = machine.storable_memory(memory, f"starting {machine.name!r}")  # or its error
    commits = (
        f"creates run {run_id or '(a new id)'!r} of {machine.name!r} v{machine.version} in state"
        f" {machine.table.initial!r} (seq 0), memory fields {sorted(fields)}"
    )
    plan = Plan(action="start", run_id=run_id, seq=-1, command=command, commits=commits)
    return plan, machine.status_in(machine.table.initial)


async def operate(
    machine: Machine[Any],
    store: Store,
    run_id: str,
    action: Action,
    *,
    expect_seq: int | None = None,
    drive: bool = False,
    lease_wait: float | None = None,
) -> Done:
    """Do `action` (`check`ed again first); what it did. With `expect_seq`, only from that
    seq: asked again after it was done, it answers what was done (`Done.again`); asked after
    the run moved otherwise, `Refused`. A run left `running` is handed on (`hand_off`)."""
    name, at, new_run_id = action.name, action.at, action.new_run_id
    if name == "fork" and new_run_id is not None:
        again = await _forked_before(store, run_id, at, new_run_id)
        if again is not None:
            return again
    if expect_seq is not None:
        record = await store.load(run_id)
        if record is not None and record.seq != expect_seq:
            return await _done_before(store, record, action, expect_seq)
    plan = await check(machine, store, run_id, action, drive=drive)
    if name == "start":
        memory = action.memory
        assert memory is not None or plan.seq >= 0
        started = await machine.start(store, memory or {}, run_id=run_id, hold=True)
        how, then = await _hand_off(machine, started, drive=_drives(name, drive))
        plan = replace(plan, handed=how)
        return Done(plan=plan, run_id=run_id, event=None, status=started.status, then=then)
    if name == "fork":
        assert at is not None
        forked = await machine.fork(store, run_id, at, new_run_id=new_run_id,
                                    memory_update=action.memory_update)  # fmt: skip
        how, then = await _hand_off(machine, forked, drive=_drives(name, drive))
        plan = replace(plan, handed=how)
        return Done(plan=plan, run_id=forked.run_id, event=None, status=forked.status, then=then)
    run = await machine.resume(store, run_id, lease_wait=lease_wait)
    committed: Event | None = None
    try:
        if name == "send":
            assert action.event is not None
            committed = await run.send(action.event, action.payload)
        elif name == "retry" or plan.retry_first:
            committed = await run.retry()
        elif name == "cancel":
            committed = await run.cancel(action.reason)
    except BaseException:
        await run.release(quiet=True)
        raise
    how, then = await _hand_off(machine, run, drive=_drives(name, drive))
    plan = replace(plan, handed=how)
    return Done(plan=plan, run_id=run_id, event=committed, status=run.status, then=then)


async def _done_before(store: Store, record: RunRecord, action: Action, expect_seq: int) -> Done:
    """`operate` asked from `expect_seq` of a run now past it: what this operation committed
    then, or `Refused` when something else moved the run."""
    mine = {"send": action.event, "retry": "retry", "cancel": "cancel"}.get(action.name)
    done = await store.history(record.run_id, expect_seq + 1, expect_seq + 1)
    if mine is not None and done and done[0].trigger == mine:
        plan = Plan(action=action.name, run_id=record.run_id, seq=expect_seq,
                    commits=f"committed as seq {done[0].seq} before", command="")  # fmt: skip
        return Done(plan=plan, run_id=record.run_id, event=done[0], status=record.status,
                    then="as before: this was done already", again=True)  # fmt: skip
    raise Refused(
        f"run {record.run_id!r} moved on since this was checked (seq {expect_seq} → "
        f"{record.seq}): look at it again before acting"
    )


async def _forked_before(store: Store, run_id: str, at: int | None, new_run_id: str) -> Done | None:
    """The fork of `run_id` at `at` named `new_run_id`, made before (a form posted twice)."""
    first = await store.history(new_run_id, 0, 0) if await store.load(new_run_id) else []
    origin = first[0].output if first else None
    if not (isinstance(origin, dict) and origin.get("forked_from") == run_id
            and origin.get("at") == at):  # fmt: skip
        return None
    plan = Plan(action="fork", run_id=run_id, seq=-1, commits="forked before", command="")
    return Done(plan=plan, run_id=new_run_id, event=None, status=first[0].status,
                then="as before: this was done already", again=True)  # fmt: skip


async def workers_serve(store: Store, agent: str) -> bool:
    """Whether live workers on this store drive runs of `agent` (heartbeats within the last
    three intervals)."""
    now = time.time()
    return any(
        b.alive(now, _HEARTBEAT) and not b.stopping and agent in b.agents
        for b in await store.queue.workers()
    )


async def _then(
    machine: Machine[Any], store: Store, run_id: str, status: str, *, drive: bool
) -> tuple[Handed, str]:
    """How a run an operation leaves `status` is handed on (`hand_off` does it), and the
    words that say so: the one rule for Python, the CLI and the UI."""
    if status != "running":
        return "none", f"nothing to drive: the run is {status}"
    if await workers_serve(store, machine.name):
        return "queue", "queued for the workers"
    if drive:
        return "here", "driven here"
    return "left", f"left for `agentfsm resume {run_id}` (no worker serves {machine.name!r})"


async def hand_off(machine: Machine[Any], run: Run[Any], *, drive: bool) -> str:
    """Give a run an operation left on to whatever drives runs; says which. A `running`
    run goes to live workers of its agent (queued), else is driven on here (`drive`), else
    is left for `agentfsm resume`. Other runs are only released."""
    return (await _hand_off(machine, run, drive=drive))[1]


async def _hand_off(machine: Machine[Any], run: Run[Any], *, drive: bool) -> tuple[Handed, str]:
    how, then = await _then(machine, run.store, run.run_id, run.status, drive=drive)
    if how == "here":
        await run.until_done()
        return how, f"{then}: now {run.status}"
    await run.release(quiet=True)
    if how == "queue":
        await machine.enqueue(run.store, run.run_id)
    return how, then
