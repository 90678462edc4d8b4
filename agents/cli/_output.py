"""What the commands print, and how anything that comes from a run or a user is made safe to
print: `shown()` escapes rich markup and makes control characters visible."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape

from ._command import plain

if TYPE_CHECKING:
    from storage import Event

    from .._agent import Agent

__all__ = ["err", "error_text", "event_line", "out", "say_model", "shown"]

# Piped output gets room for whole run ids and timestamps instead of the 80-column default.
out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def shown(value: object) -> str:
    """`value` as rich markup that prints as the text itself: on one line, control
    characters as escapes, `[` not taken for a style."""
    return escape(plain(value))


def error_text(error: dict[str, Any] | None) -> str:
    """A stored step error as one line: "Type: message"."""
    error = error or {}
    return f"{error.get('type', 'Error')}: {error.get('message', '')}"


def event_line(e: Event) -> str:
    """One committed transition, as `run`, `resume` and `send` print them while they go."""
    took = f"{(e.ended_at - e.started_at) * 1000:8.1f} ms"
    tokens = ""
    if e.usage:
        tokens = f"  tokens {e.usage.get('input_tokens', 0)}→{e.usage.get('output_tokens', 0)}"
    mark = "[red]✗[/]" if e.kind == "error" else "[green]✓[/]"
    note = f"  [red]{shown(error_text(e.error))}[/]" if e.error else ""
    if e.kind == "halt":  # a budget stopped the run: say its figures and how to go on
        mark, note = "[yellow]■[/]", f"  [yellow]budget reached: {shown(e.output)}[/]"
    move = f"{e.source} → {e.dest}"
    return (
        f"  {mark} {e.seq:>4}  {shown(e.trigger):<14} {shown(move):<28} {e.kind:<7}"
        f"{took}{tokens}{note}"
    )


def say_model(agent: Agent[Any]) -> None:
    from ..steps._llm import model_name

    name = model_name(agent.model)
    if name.startswith("offline:"):
        out.print(
            f"model: {shown(name)} [yellow](offline: deterministic answers, no API key needed)[/]"
        )
    elif agent.model is not None:
        out.print(f"model: {shown(name)}")
