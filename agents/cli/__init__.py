"""The `agentfsm` command: run, resume, inspect and draw durable agents.

Exit codes: 0 the run is done, 1 the run failed, 2 the command could not be carried out
(bad arguments or input, unknown agent or run, unusable model, unreachable store),
3 the run is waiting for an event, 130 interrupted. Every command's `--help` ends with the
codes it answers with (`_command.exit_codes`, from the `exits` of its module's `Commands`).

The commands live in one module per group: `running` (run, demo, resume, send, retry, cancel,
fork, approve), `inspecting` (runs, show, history, why, graph, report), `watching` (watch),
`maintenance` (gc, reindex, export, import, timeouts), `workers` (submit, worker, workers),
`budgets` (budget) and `serving` (ui).

Adding a command
----------------
A command is a coroutine function declared with its arguments, in a module of this package
that has a `commands = Commands()` (from `._command`)::

    @commands.command(
        "approve", "approve (or deny) a tool call a waiting run asks about",
        arg("run_id", metavar="RUN_ID"),
        arg("call_id", metavar="CALL_ID"),
        arg("--deny", metavar="MESSAGE", help="deny it, telling the model why"),
        AGENT,  # the shared --agent option, resolved with `stored_agent(store, args)`
    )
    async def approve(args: argparse.Namespace) -> int:
        from ..durable._agent import DurableAgent  # heavy imports inside the command, never on top

        async with opened(args) as store:    # --store / $AGENTFSM_STORE, checked to answer
            agent = await stored_agent(store, args)
            ...
        return EXIT_DONE

Every command gets `--store`. A module whose commands drive or follow a run declares
`commands = Commands(RUN_EXITS)`, so their `--help` lists the run's exit codes too. Add the
command to an existing group's module, or make a new module and name it in `GROUPS` below:
its commands show in `agentfsm --help` in that order.
A handler returns an exit code; it raises `UsageProblem` (or `ValueError`, `RunError`,
`StorageError`) for a one-line error and exit code 2. Print with `_output.out`/`err`, and pass
whatever comes from a run or a user through `_output.shown()`. Keep the module's top-level
imports to the standard library and this package's `_command`, `_output`, `_store` and
`_agents`: `agentfsm --help` imports every command module, and must not import pydantic-ai
(a test checks).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sys
from collections.abc import Sequence

from ._command import (
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    RUN_EXITS,
    Command,
    Parser,
    UsageProblem,
    exit_codes,
)

__all__ = ["GROUPS", "main"]

GROUPS = ("running", "inspecting", "watching", "maintenance", "workers", "budgets", "serving")
"""The modules of this package that declare commands, in the order `--help` lists them."""


def commands() -> list[Command]:
    """Every command of every group."""
    found: list[Command] = []
    for group in GROUPS:
        found += importlib.import_module(f"{__name__}.{group}").commands.declared
    return found


def _parser() -> Parser:
    p = Parser(
        prog="agentfsm", description="Durable AI agents as state machines.",
        epilog=exit_codes(RUN_EXITS), formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    for c in commands():
        parser = sub.add_parser(
            c.name, help=c.help, description=c.help, epilog=exit_codes(c.exits),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )  # fmt: skip
        for a in c.args:
            parser.add_argument(*a.names, **a.options)
        parser.add_argument(
            "--store", help="store URL (default: $AGENTFSM_STORE, else .agentfsm/store.db)"
        )
        parser.set_defaults(handler=c.handler)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        code: int = asyncio.run(args.handler(args))
    except KeyboardInterrupt:
        _error("interrupted; the run continues from its last commit with `agentfsm resume`")
        return EXIT_INTERRUPTED
    except Exception as exc:
        if not _refused(exc):
            raise
        _error(f"error: {exc}{_where(exc, args)}")
        return EXIT_USAGE
    return code


def _where(exc: Exception, args: argparse.Namespace) -> str:
    """For a run not found: which store was looked in, and how to name another."""
    from statemachine import RunNotFound

    if not isinstance(exc, RunNotFound):
        return ""
    from ._store import store_named

    return f" ({store_named(args)}): name the run's store with --store or $AGENTFSM_STORE"


def _refused(exc: Exception) -> bool:
    """Whether `exc` is a refusal to print in one line (else a bug: its traceback shows)."""
    if isinstance(exc, UsageProblem | ValueError):
        return True
    # Imported here: they are loaded already when one of theirs was raised.
    from statemachine import RunError
    from storage import StorageError

    return isinstance(exc, RunError | StorageError)


def _error(message: str) -> None:
    from ._output import err, shown

    err.print(f"agentfsm: {shown(message)}")


if __name__ == "__main__":
    sys.exit(main())
