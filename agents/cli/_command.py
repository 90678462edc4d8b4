"""How a command is declared: its name, help, arguments and handler, side by side.

Nothing here imports more than the standard library, so building the parser (and answering
`--help`) costs no more than argparse.
"""

from __future__ import annotations

import argparse
import re
import textwrap
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NoReturn

__all__ = [
    "AGENT",
    "EXIT_DONE",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_USAGE",
    "EXIT_WAITING",
    "OTHER_EXITS",
    "RUN_EXITS",
    "Arg",
    "Command",
    "Commands",
    "Handler",
    "Parser",
    "UsageProblem",
    "arg",
    "at_least",
    "exit_codes",
    "plain",
    "terminal_text",
]

EXIT_DONE, EXIT_FAILED, EXIT_USAGE, EXIT_WAITING = 0, 1, 2, 3
EXIT_INTERRUPTED = 130
_MEANINGS = {
    EXIT_DONE: "done{run}",
    EXIT_FAILED: "the run failed (`agentfsm show RUN_ID` says why; `agentfsm retry RUN_ID`)",
    EXIT_USAGE: "the command could not be carried out: bad arguments or input, unknown agent"
    " or run, unusable model, a store that does not answer (the message says which)",
    EXIT_WAITING: "the run is waiting for an event (`agentfsm send RUN_ID EVENT --data ...`)",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C); a run goes on from its last commit with"
    " `agentfsm resume RUN_ID`",
}
RUN_EXITS = (EXIT_DONE, EXIT_FAILED, EXIT_USAGE, EXIT_WAITING, EXIT_INTERRUPTED)
"""The exit codes of a command that drives or follows a run: they tell how the run stands."""
OTHER_EXITS = (EXIT_DONE, EXIT_USAGE, EXIT_INTERRUPTED)


def exit_codes(codes: tuple[int, ...]) -> str:
    """The "exit codes" paragraph that ends a command's `--help` (and the module docs)."""
    run = " (the run is done, or left as asked)" if EXIT_WAITING in codes else ""
    lines = [
        textwrap.fill(
            _MEANINGS[code].format(run=run), 78, initial_indent=f"  {code:<4}",
            subsequent_indent=" " * 6,
        )
        for code in codes
    ]  # fmt: skip
    return "exit codes:\n" + "\n".join(lines)


Handler = Callable[[argparse.Namespace], Awaitable[int]]
"""A command's body: the parsed arguments in, the exit code out."""


class UsageProblem(Exception):
    """A one-line reason why the command cannot be carried out (exit code 2)."""


@dataclass(frozen=True, slots=True)
class Arg:
    """One `ArgumentParser.add_argument` call, kept until the parser is built."""

    names: tuple[str, ...]
    options: dict[str, Any]


def arg(*names: str, **options: Any) -> Arg:
    """An argument of a command, written as for `ArgumentParser.add_argument`."""
    return Arg(names, options)


AGENT = arg(
    "--agent",
    metavar="MODULE:AGENT",
    help="the run's agent (an agents.Agent, a DurableAgent or a pydantic_ai.Agent);"
    " needed unless an agent of the run's name is registered",
)
"""The one `--agent` option of the commands that act on a stored run."""


@dataclass(frozen=True, slots=True)
class Command:
    name: str
    help: str
    args: tuple[Arg, ...]
    handler: Handler
    exits: tuple[int, ...] = OTHER_EXITS


class Commands:
    """The commands of one module of `agents.cli`, in the order they are declared.

    `exits`: the exit codes its commands answer with (`RUN_EXITS` for a module whose
    commands drive or follow a run), listed at the end of each command's `--help`."""

    def __init__(self, exits: tuple[int, ...] = OTHER_EXITS) -> None:
        self.declared: list[Command] = []
        self.exits = exits

    def command(self, name: str, help: str, *args: Arg) -> Callable[[Handler], Handler]:
        """Declare the decorated coroutine function as the command `name`, with `args`."""

        def register(handler: Handler) -> Handler:
            self.declared.append(Command(name, help, args, handler, self.exits))
            return handler

        return register


def at_least(low: float, kind: type[int] | type[float] = int) -> Callable[[str], float]:
    """An argparse `type=`: a number of `kind` no smaller than `low`."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{text} is less than {kind(low)}")
        return value

    return parse


_CONTROLS = "\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069"
"""C0 and C1 control characters, DEL, and the bidi embeddings, overrides and isolates."""
_CONTROL = re.compile(f"[{_CONTROLS}]")
_CONTROL_BUT_LINES = re.compile(f"(?![\n\t])[{_CONTROLS}]")


def _escape(found: re.Match[str]) -> str:
    return repr(found.group())[1:-1]


def plain(text: object) -> str:
    """`text` on one line with its control characters shown as escapes (`\\x1b`, `\\n`), so
    nothing a run stored can move the cursor, recolour or retitle the user's terminal."""
    return _CONTROL.sub(_escape, str(text))


def terminal_text(text: str) -> str:
    """`text` as `plain` makes it, but keeping its newlines and tabs: streamed model text."""
    return _CONTROL_BUT_LINES.sub(_escape, text)


class Parser(argparse.ArgumentParser):
    """argparse, except that the arguments it quotes back in an error are made `plain`."""

    def error(self, message: str) -> NoReturn:
        super().error(plain(message))
