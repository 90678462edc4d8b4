"""`Agent`: a durable state machine with a typed memory and model settings for its LLM steps."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeGuard, TypeVar

from pydantic import BaseModel

from statemachine import DefinitionError, Machine, RunNotFound
from statemachine.engine import (
    DEFAULT_MAX_MEMORY,
    Action,
    Done,
    Migration,
    Refused,
    Transition,
    check,
    operate,
)
from storage import Store

from .spending._budget import Budget, BudgetGate, limits_to_set, set_limits
from .spending._ratelimit import RateLimit

if TYPE_CHECKING:
    from .steps._llm import LlmStep, ModelSpec

__all__ = ["Agent"]

M = TypeVar("M", bound=BaseModel)


class Agent(Machine[M]):
    """An agent declared as a state table. See `statemachine.Machine` for the arguments.

    Args:
        model: the default pydantic-ai model (a name such as "openai:gpt-4o-mini" or a
            `Model` object) for `llm()` steps that do not name their own.
        budget: limits on what one run may spend (`Budget(requests=, total_tokens=,
            cost=)`), checked before each model request (see `agents.spending._budget`).
        scope_budget / budget_scope: limits shared by all runs whose memory
            `budget_scope(memory)` names the same scope (a tenant), per `Budget(per=...)`.
        on_budget: the state a run goes to when it reaches a budget; without one it parks
            `waiting` where it is until the budget is raised (`Agent.raise_budget`).
        rate_limits: limits on model requests shared by every process on the store
            (`RateLimit(requests_per_second=, tokens_per_minute=, concurrency=)`).
    """

    def __init__(
        self,
        *,
        name: str,
        memory: type[M],
        initial: str,
        final: str | Sequence[str],
        transitions: Sequence[Transition],
        version: int = 1,
        model: ModelSpec | None = None,
        states: Sequence[str] | None = None,
        on_error: str | None = None,
        lease_ttl: float = 15.0,
        crash_retries: int = 3,
        max_memory: int | None = DEFAULT_MAX_MEMORY,
        migrations: Mapping[int, Migration] | None = None,
        state_renames: Mapping[str, str] | None = None,
        retention: float | None = None,
        budget: Budget | None = None,
        scope_budget: Budget | None = None,
        budget_scope: Callable[[M], str] | None = None,
        on_budget: str | None = None,
        rate_limits: Sequence[RateLimit] = (),
    ) -> None:
        self._declared = dict(
            name=name,
            memory=memory,
            initial=initial,
            final=final,
            transitions=transitions,
            version=version,
            states=states,
            on_error=on_error,
            lease_ttl=lease_ttl,
            crash_retries=crash_retries,
            max_memory=max_memory,
            migrations=migrations,
            state_renames=state_renames,
            retention=retention,
            budget=budget,
            scope_budget=scope_budget,
            budget_scope=budget_scope,
            on_budget=on_budget,
            rate_limits=rate_limits,
        )
        gate = _gate(budget, scope_budget, budget_scope, on_budget, memory)
        super().__init__(
            name=name,
            memory=memory,
            initial=initial,
            final=final,
            transitions=[_bind(t, model, gate, tuple(rate_limits)) for t in transitions],
            version=version,
            states=states,
            on_error=on_error,
            lease_ttl=lease_ttl,
            crash_retries=crash_retries,
            max_memory=max_memory,
            migrations=migrations,
            state_renames=state_renames,
            retention=retention,
            halt_states=[on_budget] if on_budget is not None else [],
        )
        self.model = model
        self.budget_gate = gate
        if gate is not None and gate.scope_budget is not None:
            self.scope_charge = gate.scope_charge
        fields = memory.model_fields
        for t in self.transitions:
            for field in getattr(t.step, "writes", ()):
                if field not in fields:
                    raise DefinitionError(
                        f"transition {t.describe()} writes into={field!r}, which is not a field of"
                        f" {memory.__name__} (fields: {', '.join(fields)})"
                    )

    def with_model(self, model: ModelSpec) -> Agent[M]:
        """The same agent with another default model (steps that name their own keep it)."""
        return Agent(**{**self._declared, "model": model})  # type: ignore[arg-type]

    def check_models(self) -> None:
        """Raise `ValueError` naming the step and the reason when a step's model cannot be
        used (unknown name, missing API key, provider SDK not installed). Sends no request."""
        for t in self.transitions:
            if _is_llm(t.step):
                from .steps._llm import check_model

                check_model(t.step.model, f"{self.name}: llm step {t.trigger!r}")

    async def raise_budget(
        self, store: Store, *, run_id: str | None = None, scope: str | None = None,
        limits: Budget, dry_run: bool = False,
    ) -> list[Done]:  # fmt: skip
        """Set new limits for one run or a scope (in place of the declared ones, lower or
        higher: `agents.spending._budget.set_limits`), then retry the runs of this agent that the
        budget parked (`waiting` after a halt event of that budget): each is one engine
        operation ("retry"), whose run is handed on: queued when workers serve this agent,
        else left for `agentfsm resume` (`Done.then` says which). With `dry_run`, nothing is
        written: the plans, as `Done`s with no event. `RunNotFound`, or `Refused` for a run
        of another agent, as every action on a run (nothing is written then)."""
        limits_to_set(run_id=run_id, scope=scope, limits=limits)  # or what is missing
        stored = await store.load(run_id) if run_id is not None else None
        if run_id is not None:
            if stored is None:
                raise RunNotFound(run_id)
            if stored.agent != self.name:
                raise Refused(
                    f"run {run_id!r} belongs to {stored.agent!r}, not to {self.name!r}"
                )  # fmt: skip
        if not dry_run:
            await set_limits(store, run_id=run_id, scope=scope, limits=limits)
        if stored is not None:
            candidates = [stored] if stored.status == "waiting" else []
        else:
            candidates = await store.list_runs(agent=self.name, status="waiting", limit=10**6)
        moved: list[Done] = []
        for record in candidates:
            last = await store.history(record.run_id, record.seq, record.seq)
            out = last[0].output if last and last[0].kind == "halt" else None
            if not isinstance(out, dict):
                continue
            if run_id is None and (out.get("budget") != "scope" or out.get("name") != scope):
                continue
            if dry_run:
                plan = await check(self, store, record.run_id, Action(name="retry"))
                moved.append(Done(plan=plan, run_id=record.run_id, event=None,
                                  status=record.status, then=plan.then))  # fmt: skip
            else:
                moved.append(await operate(self, store, record.run_id, Action(name="retry")))
        return moved


def _gate(
    budget: Budget | None,
    scope_budget: Budget | None,
    budget_scope: Callable[[Any], str] | None,
    on_budget: str | None,
    memory: type[BaseModel],
) -> BudgetGate | None:
    if (scope_budget is None) != (budget_scope is None):
        raise DefinitionError("scope_budget= and budget_scope= go together")
    if budget is None and scope_budget is None:
        if on_budget is not None:
            raise DefinitionError("on_budget= needs budget= or scope_budget=")
        return None
    return BudgetGate(
        run_budget=budget, scope_budget=scope_budget, scope=budget_scope,
        on_budget=on_budget, memory_type=memory,
    )  # fmt: skip


def _bind(
    t: Transition, model: ModelSpec | None, gate: BudgetGate | None, limits: tuple[RateLimit, ...]
) -> Transition:
    if _is_llm(t.step):
        from .spending._paid import Spending

        spending = Spending(gate=gate, rate_limits=limits) if gate or limits else None
        return dataclasses.replace(t, step=t.step.bound(model, spending))
    return t


def _is_llm(step: object) -> TypeGuard[LlmStep]:
    """Whether `step` is an `llm()` step, without importing pydantic-ai for an agent that
    has none: an `LlmStep` exists only once its module (which imports it) was imported."""
    module = sys.modules.get(f"{__package__}.steps._llm")
    return module is not None and isinstance(step, module.LlmStep)
