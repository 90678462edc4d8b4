"""Commands about spending: budget (show a run's or a scope's ledger, raise its limits)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._agents import load_agent, registered_agent
from ._command import AGENT, EXIT_DONE, Commands, UsageProblem, arg, at_least
from ._output import out, shown
from ._store import opened

if TYPE_CHECKING:
    import argparse

__all__ = ["commands"]

commands = Commands()


@commands.command(
    "budget",
    "a run's or a scope's usage ledger; with limits, raise its budget and send parked runs on",
    arg("run_id", nargs="?", metavar="RUN_ID", help="this run (or give --scope)"),
    arg("--scope", help="a budget scope (what the agent's budget_scope= returns)"),
    arg("--period", help="the scope's period to show (default: the current one)"),
    arg("--requests", type=at_least(0), help="the new limit of model requests"),
    arg("--total-tokens", type=at_least(0), help="the new limit of input + output tokens"),
    arg("--cost", type=at_least(0, float), help="the new limit of cost, in US dollars"),
    AGENT,
    arg("--dry-run", action="store_true", help="say what a raise would do; commit nothing"),
)
async def budget(args: argparse.Namespace) -> int:
    import time

    from statemachine import RunNotFound

    from ..spending._budget import Budget, in_force, limits_line, period_of, set_limits
    from ..spending._usage_text import usage_line

    if (args.run_id is None) == (args.scope is None):
        raise UsageProblem("give a RUN_ID or --scope NAME, one of them")
    raising = any(v is not None for v in (args.requests, args.total_tokens, args.cost))
    async with opened(args) as store:
        agent = None
        if args.run_id is not None:
            record = await store.load(args.run_id)
            if record is None:
                raise RunNotFound(args.run_id)
            agent = (
                load_agent(args.agent, store) if args.agent
                else registered_agent(record.agent, store)
            )  # fmt: skip
        elif args.agent:
            agent = load_agent(args.agent, store)
        if raising:
            limits = Budget(requests=args.requests, total_tokens=args.total_tokens, cost=args.cost)
            would = "would set" if args.dry_run else "limits set"
            if agent is None:
                if not args.dry_run:
                    await set_limits(store, run_id=args.run_id, scope=args.scope, limits=limits)
                out.print(f"{would}; pass --agent MODULE:AGENT to also send parked runs on")
            else:
                moved = await agent.raise_budget(
                    store, run_id=args.run_id, scope=args.scope, limits=limits,
                    dry_run=args.dry_run,
                )  # fmt: skip
                if args.dry_run:
                    sent = "; ".join(
                        f"{shown(d.run_id)}: {shown(d.plan.commits)}; then: {shown(d.then)}"
                        for d in moved
                    )
                    out.print(f"{would} {limits_line(limits.ledger_limits())}; would send on:"
                              f" {sent or 'none'}; nothing committed")  # fmt: skip
                else:
                    sent = ", ".join(f"{shown(d.run_id)} ({shown(d.then)})" for d in moved)
                    out.print(f"{would}; sent on: {sent or 'none'}")
        gate = agent.budget_gate if agent is not None else None
        usage: dict[str, int]
        if args.run_id is not None:
            record = await store.load(args.run_id)
            assert record is not None
            subject, usage = f"run/{args.run_id}", record.usage
            declared = gate.run_budget if gate is not None else None
            out.print(f"run      {shown(args.run_id)} ({record.status} in {shown(record.state)})")
        else:
            declared = gate.scope_budget if gate is not None else None
            ledger = store.ledger
            if args.period:
                periods = [args.period]
            elif declared is not None:
                periods = [period_of(declared.per, time.time())]
            else:  # no agent says which period the scope counts by: the first that has usage
                periods = [period_of(per, time.time()) for per in (None, "day", "hour", "month")]
            usage = {}
            for period in periods:
                usage = await ledger.scope_usage(args.scope, period)
                if usage:
                    break
            subject = f"scope/{args.scope}"
            out.print(f"scope    {shown(args.scope)} ({period})")
        in_force_now = await in_force(store, subject, declared)
    out.print(f"usage    {usage_line(usage)}")
    if in_force_now:
        out.print(f"limits   {limits_line(in_force_now)}")
    elif agent is None:
        out.print("limits   none set (pass --agent MODULE:AGENT to see the declared ones)")
    return EXIT_DONE
