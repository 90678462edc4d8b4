"""Budgets: limits on what a run, or a scope of many runs, may spend on model requests.

Checked before every model request (`BudgetGate.admit`: a run never starts a request once
it is at its limit), charged at commit: a run's own figures are its usage ledger, kept by
the commit itself (`RunRecord.usage`); a scope's (`budget_scope=`, a function of the memory:
a tenant, a user) are charged by the commit too, once per event key (`Store.commit(...,
scope_charge=)`: the store makes it land once whatever crashes, Redis Cluster included).

A run that reaches a limit is halted (`statemachine.StepHalted`, an event of kind "halt"
whose output has the figures): it goes to the agent's `on_budget` state, or, without one,
parks `waiting` where it is until its budget is raised (`Agent.raise_budget`,
`agentfsm budget`)
and it is sent on (`Run.retry()`, which the raise does).

Every model request is admitted (`agents.spending._paid`), output retries and tool-loop
rounds included, against the limits in force (`in_force`: the declared ones, each replaced
by one people set, lower or higher). A scope's admission is a reservation
(`Ledger.reserve`, one round trip): the store checks the scope's committed totals plus the
requests other runs hold in flight, and holds this one until the commit's charge drops it
(or `release` when it got no answer; a reservation a dead process held lapses after
`RESERVATION_TTL`). So concurrent runs of one scope never overshoot its `requests` limit,
and overshoot a token or cost limit at most by what the requests in flight use. A run's own
limit is exact: its requests are one at a time and counted in its transition's tally.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal

from pydantic import BaseModel, JsonValue

from statemachine import Run, RunError, StepContext
from statemachine.errors import StepHalted
from storage import Event, Store
from storage.base import ScopeCharge
from storage.usage import COST_UNIT, added, increments, with_total

__all__ = [
    "RESERVATION_TTL",
    "Budget",
    "BudgetGate",
    "BudgetReached",
    "Held",
    "halted",
    "in_force",
    "limits_line",
    "limits_to_set",
    "period_of",
    "run_limits",
    "set_limits",
]

Period = Literal["hour", "day", "month"]
_FORMATS: dict[str, str] = {"hour": "%Y-%m-%dT%H", "day": "%Y-%m-%d", "month": "%Y-%m"}
_SECONDS = {"hour": 3600, "day": 86400, "month": 31 * 86400}
RESERVATION_TTL = 300.0
"""Seconds a scope's reservation of a request outlives a holder that never charged nor
released it (a process that died), as a rate-limit slot does (`Bucket.slot_ttl`)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Budget:
    """Limits (None: no limit). `cost` is in US dollars, known for models `genai-prices`
    prices; `per` makes a scope budget's limits hold per calendar hour, day or month (UTC)."""

    requests: int | None = None
    total_tokens: int | None = None
    """Input plus output tokens."""
    cost: float | None = None
    tool_calls: int | None = None
    per: Period | None = None

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name != "per" and value is not None and not value >= 0:
                raise ValueError(f"Budget({f.name}=...) must be 0 or more, not {value!r}")
        if self.per is not None and self.per not in _FORMATS:
            raise ValueError(f"Budget(per=...) must be one of {sorted(_FORMATS)}, not {self.per!r}")

    def ledger_limits(self) -> dict[str, int]:
        """The limits as ledger figures (integers; cost in nano-USD)."""
        out: dict[str, int] = {}
        if self.requests is not None:
            out["requests"] = self.requests
        if self.total_tokens is not None:
            out["total_tokens"] = self.total_tokens
        if self.cost is not None:
            out["cost_nusd"] = round(self.cost / COST_UNIT)
        if self.tool_calls is not None:
            out["tool_calls"] = self.tool_calls
        return out


class BudgetReached(RunError):
    """A `DurableAgent` run reached its budget and is parked; raise the budget
    (`DurableAgent.raise_budget`) and call `run` again to go on."""

    def __init__(self, run_id: str, figures: JsonValue) -> None:
        super().__init__(
            f"run {run_id!r} reached its budget ({figures}): raise it with"
            f" `agentfsm budget {run_id} --requests N` (or `DurableAgent.raise_budget`), then run"
            " it again"
        )
        self.run_id = run_id
        self.figures = figures


async def halted(run: Run[Any]) -> bool:
    """Whether `run` is parked by its budget (`waiting` after a halt event)."""
    if run.status != "waiting":
        return False
    last = await run.store.history(run.run_id, run.seq, run.seq)
    return bool(last) and last[0].kind == "halt"


def period_of(per: Period | None, at: float) -> str:
    """The ledger period `at` (unix seconds) falls in: "2026-12-02" for a day, "all" for none."""
    return "all" if per is None else time.strftime(_FORMATS[per], time.gmtime(at))


async def in_force(store: Store, subject: str, declared: Budget | None) -> dict[str, int]:
    """The limits in force for `subject` ("run/<id>", "scope/<name>"), as ledger figures:
    the declared ones, each replaced by the one people set (`set_limits`), lower or
    higher. The one rule `admit`, `agentfsm budget`, `show`, the UI and the errors use."""
    return with_set(declared, await store.ledger.limits(subject))


def with_set(declared: Budget | None, set_limits: Mapping[str, int]) -> dict[str, int]:
    """The declared limits (as ledger figures), each replaced by the one people set."""
    limits = declared.ledger_limits() if declared is not None else {}
    limits.update(set_limits)
    return limits


def limits_line(limits: Mapping[str, int]) -> str:
    """Limits as people read them: "requests 2, total_tokens 500, cost $0.50" ("-": none)."""
    shown = [
        f"cost ${value * COST_UNIT:.6g}" if name == "cost_nusd" else f"{name} {value}"
        for name, value in sorted(limits.items())
    ]
    return ", ".join(shown) or "-"


async def run_limits(store: Store, machine: object, run_id: str) -> dict[str, int]:
    """The limits in force for run `run_id` (`in_force`), `machine` its agent if known."""
    gate = getattr(machine, "budget_gate", None)
    return await in_force(store, f"run/{run_id}", gate.run_budget if gate is not None else None)


def figures(usage: Mapping[str, int]) -> dict[str, int]:
    """Ledger totals with `total_tokens` (input + output) added, as limits name them."""
    return with_total(usage)


def over(limits: Mapping[str, int], used: Mapping[str, int]) -> dict[str, int]:
    """The limits `used` has reached (a request now would go past them)."""
    return {name: limit for name, limit in limits.items() if used.get(name, 0) >= limit}


@dataclass(frozen=True, kw_only=True, slots=True)
class Held:
    """A request a scope holds in flight for a run (`BudgetGate.admit`)."""

    scope: str
    period: str
    run_id: str


@dataclass(frozen=True, kw_only=True, slots=True)
class BudgetGate:
    """An agent's budgets: checks before each model request, scope charges after commits."""

    run_budget: Budget | None
    scope_budget: Budget | None
    scope: Callable[[Any], str] | None
    on_budget: str | None
    memory_type: type[BaseModel]

    async def admit(self, memory: Any, ctx: StepContext) -> Held | None:
        """Before one model request: `StepHalted` when a budget in force (`in_force`) is
        reached, counting what the run's committed events and this transition's tries so far
        paid (and, for a scope, what its other runs committed or hold in flight). A scope's
        admission holds the request (`Ledger.reserve`): the commit's charge lets it go, or
        `release` when the request got no answer."""
        store = ctx.store
        if store is None:
            return None
        if self.run_budget is not None:
            used = figures(added(ctx.usage, ctx.spent))
            limits = await in_force(store, f"run/{ctx.run_id}", self.run_budget)
            reached = over(limits, used)
            if reached:
                raise self._halt("run", ctx.run_id, reached, used, None)
        if self.scope_budget is None or self.scope is None:
            return None
        held = Held(
            scope=self.scope(memory),
            period=period_of(self.scope_budget.per, time.time()),
            run_id=ctx.run_id,
        )
        got = await store.ledger.reserve(
            held.scope, held.period, held.run_id, self.scope_budget.ledger_limits(),
            RESERVATION_TTL, spent=ctx.spent,
        )  # fmt: skip
        if not got.admitted:
            reached = over(got.limits, got.used)
            raise self._halt("scope", held.scope, reached, got.used, held.period)
        return held

    @staticmethod
    async def release(held: Held, ctx: StepContext) -> None:
        """The request `admit` held got no answer: the scope holds only what the transition
        answered so far (charged with its commit)."""
        if ctx.store is not None:
            keep = ctx.spent.get("requests", 0)
            await ctx.store.ledger.release(held.scope, held.period, held.run_id, keep=keep)

    def _halt(
        self,
        kind: str,
        name: str,
        reached: dict[str, int],
        used: dict[str, int],
        period: str | None,
    ) -> StepHalted:
        output: dict[str, JsonValue] = {
            "budget": kind, "name": name, "limits": dict(reached),
            "used": {k: used.get(k, 0) for k in reached},
        }  # fmt: skip
        if period is not None:
            output["period"] = period
        what = ", ".join(f"{k} {used.get(k, 0)}/{v}" for k, v in reached.items())
        where = f"the agent's {self.on_budget!r} state" if self.on_budget else "waiting"
        return StepHalted(
            f"{kind} budget of {name!r} reached ({what}): the run goes to {where}",
            dest=self.on_budget,
            output=output,
        )

    def scope_charge(self, memory: Any, event: Event, store: Store) -> ScopeCharge | None:
        """The charge of `event`'s usage to the run's scope, made with the commit
        (`Machine.scope_charge`); None when there is nothing to charge."""
        return self._charge_of(memory, event)

    def _charge_of(self, memory: Any, event: Event) -> ScopeCharge | None:
        if not increments(event) or self.scope_budget is None or self.scope is None:
            return None
        per = self.scope_budget.per
        at = event.ended_at or time.time()
        expires = at + 2 * _SECONDS[per] if per is not None else 0.0
        return ScopeCharge(scope=self.scope(memory), period=period_of(per, at), expires_at=expires)


async def set_limits(
    store: Store,
    *,
    run_id: str | None = None,
    scope: str | None = None,
    limits: Budget,
) -> None:
    """Set the limits of one run (`run_id`) or of a scope, in place of the declared ones
    (limits left None keep theirs). A scope's set limits hold for every period (a day's
    limit raised stays raised the next days) until set again. Runs parked by the budget stay
    parked: `Agent.raise_budget` also sends them on."""
    subject, new = limits_to_set(run_id=run_id, scope=scope, limits=limits)
    await store.ledger.set_limits(subject, new)


def limits_to_set(
    *, run_id: str | None = None, scope: str | None = None, limits: Budget
) -> tuple[str, dict[str, int]]:
    """The ledger subject and the limits `set_limits` writes (a dry run checks them too), or
    the error naming what is missing."""
    if (run_id is None) == (scope is None):
        raise ValueError("give run_id= or scope=, one of them")
    subject = f"run/{run_id}" if run_id is not None else f"scope/{scope}"
    new = limits.ledger_limits()
    if not new:
        raise RunError("set_limits: give at least one limit (requests=, total_tokens=, ...)")
    return subject, dict(new)
