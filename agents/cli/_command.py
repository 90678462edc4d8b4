"""How a command is declared: its name, help, arguments and handler, side by side.

Nothing here imports more than the standard library, so building the parser (and answering
`--help`) costs no more than argparse.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NoReturn

__all__ = [
    "AGENT",
    "EXIT_DONE",
    "EXIT_FAILED",
    "EXIT_USAGE",
    "EXIT_WAITING",
    "Arg",
    "Command",
    "Commands",
    "Handler",
    "Parser",
    "UsageProblem",
    "arg",
    "at_least",
    "plain",
]

EXIT_DONE, EXIT_FAILED, EXIT_USAGE, EXIT_WAITING = 0, 1, 2, 3

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


class Commands:
    """The commands of one module of `agents.cli`, in the order they are declared."""

    def __init__(self) -> None:
        self.declared: list[Command] = []

    def command(self, name: str, help: str, *args: Arg) -> Callable[[Handler], Handler]:
        """Declare the decorated coroutine function as the command `name`, with `args`."""

        def register(handler: Handler) -> Handler:
            self.declared.append(Command(name, help, args, handler))
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


_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def plain(text: object) -> str:
    """`text` on one line with its control characters shown as escapes (`\\x1b`, `\\n`), so
    nothing a run stored can move the cursor, recolour or retitle the user's terminal."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], str(text))


class Parser(argparse.ArgumentParser):
    """argparse, except that the arguments it quotes back in an error are made `plain`."""

    def error(self, message: str) -> NoReturn:
        super().error(plain(message))
