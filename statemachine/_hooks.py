"""The named hooks of a run's step protocol: what happens beside a step and its commit, kept
out of the runner's loop (`Run._run_and_commit` calls them by name, in this order):

    before_step       a try of a step begins
    after_try_failed  a try raised (retried or not)
    before_commit     what the commit also writes (arguments of `Store.commit`)
    after_commit      the commit landed (also, on picking a run up, for its last commit:
                      a crash may have cut that call short)

The hooks every run has: `LiveHook` (the live channel: step started, failed, committed),
`TracingHook` (a failed try on the transition's span) and `ChargesHook` (a budget scope's
charge, made by the commit where the store can, after it elsewhere: `Machine.scope_charge`,
`Machine.after_commit`). The transition's span itself wraps each transition (`_tracing`).
`Hooks` lists, for each point, the hooks that do something there: a hook that does nothing
at a point costs nothing there, not even a call.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from ._live import notices
from ._tracing import step_failed

if TYPE_CHECKING:
    from storage import Event, RunRecord, Store

    from ._live import Publisher
    from ._spec import MachineSpec
    from ._table import Transition

__all__ = ["ChargesHook", "Hook", "Hooks", "LiveHook", "TracingHook"]


class Hook:
    """A hook of the step protocol (see the module doc); each method does nothing here."""

    name = "hook"

    async def before_step(self, t: Transition, seq: int, attempt: int, first: bool) -> None:
        """A try of `t` begins after commit `seq`; `first`: the first step under the lease
        this process holds."""

    def after_try_failed(self, seq: int, attempt: int, error: BaseException, again: bool) -> None:
        """Try `attempt` raised `error`; `again`: it will be tried again."""

    def before_commit(self, memory: BaseModel, event: Event) -> dict[str, Any]:
        """Arguments the commit of `event` also takes (`Store.commit`'s keywords)."""
        return {}

    async def after_commit(self, record: RunRecord, event: Event, *, again: bool) -> None:
        """`event` is committed (`record` is the run after it); `again`: called once more
        for the last commit when a process picks the run up."""


class LiveHook(Hook):
    """The run's live channel: a step's start (stored before the first step under a lease
    runs: crash accounting reads it, `_crashes.deaths_in_step`), failed tries; each commit
    writes what was queued, and its own notices, in its round trip (`Store.commit`)."""

    name = "live"

    def __init__(self, live: Publisher) -> None:
        self.live = live

    async def before_step(self, t: Transition, seq: int, attempt: int, first: bool) -> None:
        assert t.step is not None
        if first:
            await self.live.started_now(seq, t.trigger, attempt, t.step.kind, t.step.label)
        else:
            self.live.started(seq, t.trigger, attempt, t.step.kind, t.step.label)

    def after_try_failed(self, seq: int, attempt: int, error: BaseException, again: bool) -> None:
        self.live.failed(seq, attempt, error, again)

    def before_commit(self, memory: BaseModel, event: Event) -> dict[str, Any]:
        queued = self.live.take()
        return {"live": [*queued, *notices(event, alone=not queued)]}


class TracingHook(Hook):
    """A failed try, recorded on the transition's span."""

    name = "tracing"

    def after_try_failed(self, seq: int, attempt: int, error: BaseException, again: bool) -> None:
        step_failed(error, attempt, retry=again)


class ChargesHook(Hook):
    """What a commit charges beside the run: `Machine.scope_charge` (made by the commit) and
    `Machine.after_commit` (after it, and again on pick-up; idempotent by the event key)."""

    name = "charges"

    def __init__(self, machine: MachineSpec[Any], store: Store) -> None:
        self.machine = machine
        self.store = store

    @staticmethod
    def wanted(machine: MachineSpec[Any]) -> bool:
        """Whether `machine` has anything to charge (a run without it leaves this hook out:
        no call per commit)."""
        return machine.scope_charge is not None or bool(machine.after_commit)

    def before_commit(self, memory: BaseModel, event: Event) -> dict[str, Any]:
        charge_of = self.machine.scope_charge
        charge = None if charge_of is None else charge_of(memory, event, self.store)
        return {} if charge is None else {"scope_charge": charge}  # stores without: no keyword

    async def after_commit(self, record: RunRecord, event: Event, *, again: bool) -> None:
        for hook in self.machine.after_commit:
            await hook(record, event, self.store)


class Hooks:
    """A run's hooks, in order (`all`), and for each point of the protocol the ones that do
    something there (whose class overrides `Hook`'s method)."""

    __slots__ = ("after_commit", "after_try_failed", "all", "before_commit", "before_step")

    def __init__(self, hooks: tuple[Hook, ...]) -> None:
        self.all = hooks
        at = _points(tuple(type(h) for h in hooks))  # per run: the classes' answer, cached
        self.before_step = tuple(hooks[i] for i in at["before_step"])
        self.after_try_failed = tuple(hooks[i] for i in at["after_try_failed"])
        self.before_commit = tuple(hooks[i] for i in at["before_commit"])
        self.after_commit = tuple(hooks[i] for i in at["after_commit"])


@functools.cache
def _points(kinds: tuple[type[Hook], ...]) -> dict[str, tuple[int, ...]]:
    """For each point, the positions of the hook classes that override it."""
    points = ("before_step", "after_try_failed", "before_commit", "after_commit")
    return {
        p: tuple(i for i, k in enumerate(kinds) if getattr(k, p) is not getattr(Hook, p))
        for p in points
    }
