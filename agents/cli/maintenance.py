"""Commands that look after a store: gc, reindex, export, import, timeouts."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from ._agents import ENTRY_POINTS, load_agent
from ._command import EXIT_DONE, Commands, UsageProblem, arg
from ._output import out, shown
from ._store import opened

if TYPE_CHECKING:
    import argparse

__all__ = ["commands"]

commands = Commands()


@commands.command("gc", "delete runs whose retention ran out; clean the indexes")
async def gc(args: argparse.Namespace) -> int:
    async with opened(args) as store:
        removed = await store.gc(time.time())
    out.print(f"removed {removed} expired run(s) or index entries")
    return EXIT_DONE


@commands.command("reindex", "rebuild the indexes of runs (by agent, status, time) from the runs")
async def reindex(args: argparse.Namespace) -> int:
    async with opened(args) as store:
        out.print(f"indexed {await store.reindex()} run(s)")
    return EXIT_DONE


@commands.command(
    "export",
    "write runs and their histories (and, for the whole store, its scope ledgers and set"
    " limits) to a JSON Lines file",
    arg("run_ids", nargs="*", metavar="RUN_ID", help="these runs (default: all)"),
    arg("--agent", metavar="NAME", help="every run of this agent"),
    arg("-o", "--output", required=True, metavar="FILE", help="the .jsonl file"),
)
async def export(args: argparse.Namespace) -> int:
    from storage.backup import export_runs

    if args.run_ids and args.agent:
        raise UsageProblem("give RUN_IDs or --agent, not both")
    runs = events = other = 0
    async with opened(args) as store:
        try:
            # A CLI command: nothing else runs on its loop, so blocking file I/O is fine.
            with open(args.output, "w", encoding="utf-8") as f:  # noqa: ASYNC230
                try:
                    async for line in export_runs(store, args.run_ids, agent=args.agent):
                        runs += line.startswith('{"run"')
                        events += line.startswith('{"event"')
                        other += line.startswith(('{"ledger"', '{"limits"'))
                        f.write(line + "\n")
                except KeyError as exc:
                    raise UsageProblem(str(exc.args[0])) from None
        except OSError as exc:
            raise UsageProblem(f"cannot write {args.output}: {exc.strerror or exc}") from None
    extra = f", {other} ledger(s) and limit(s)" if other else ""
    out.print(f"wrote {runs} run(s) and {events} event(s){extra} to {shown(args.output)}")
    return EXIT_DONE


@commands.command(
    "import",
    "write the runs of an export file into the store",
    arg("file", metavar="FILE", help="a file written by `agentfsm export`"),
)
async def import_(args: argparse.Namespace) -> int:
    from storage.backup import import_runs

    async with opened(args) as store:
        try:
            with open(args.file, encoding="utf-8") as f:  # noqa: ASYNC230  (as in export)
                result = await import_runs(store, f)
        except OSError as exc:
            raise UsageProblem(f"cannot read {args.file}: {exc.strerror or exc}") from None
        except ValueError as exc:
            raise UsageProblem(f"{args.file}: {exc}") from None
    out.print(f"imported {len(result.imported)} run(s) with {result.events} event(s)")
    if result.ledgers or result.limits:
        out.print(f"imported {result.ledgers} scope ledger(s) and {result.limits} set limit(s)")
    if result.diverged:
        out.print(
            "merged scope ledgers both stores charged since they parted (the larger totals"
            " kept): " + shown(", ".join(result.diverged))
        )
    if result.skipped:
        out.print(
            f"skipped {len(result.skipped)} run(s) this store has already: "
            + shown(", ".join(result.skipped))
        )
    return EXIT_DONE


@commands.command(
    "timeouts",
    "fire the wait timeouts that are due (run it from cron, or let a worker)",
    arg(
        "--agent",
        action="append",
        metavar="MODULE:AGENT",
        help="only this agent's runs (repeatable); default: every registered agent",
    ),
)
async def timeouts(args: argparse.Namespace) -> int:
    from importlib.metadata import entry_points

    specs = args.agent or [ep.value for ep in entry_points(group=ENTRY_POINTS)]
    fired = 0
    async with opened(args) as store:
        for agent in [load_agent(spec, store) for spec in specs]:
            for run_id in await agent.fire_due(store):
                out.print(f"{shown(run_id)}: {shown(agent.name)} timed out")
                fired += 1
    out.print(f"fired {fired} due timeout(s)")
    return EXIT_DONE
