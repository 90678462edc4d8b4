"""The `watch` command: a run's model tokens as they come, and one line per committed step."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from ._command import (
    EXIT_DONE,
    EXIT_FAILED,
    EXIT_WAITING,
    RUN_EXITS,
    Commands,
    UsageProblem,
    arg,
    terminal_text,
)
from ._output import error_text, event_line, out, shown
from ._store import opened

if TYPE_CHECKING:
    import argparse

    from statemachine.engine import WatchItem

__all__ = ["commands"]

commands = Commands(RUN_EXITS)


@commands.command(
    "watch",
    "follow a run live: model tokens as they stream, one line per committed step",
    arg("run_id", metavar="RUN_ID"),
    arg("--after", metavar="OFFSET", help="start after this offset (printed with each step)"),
    arg("--follow", action="store_true", help="go on across resumes until the run ends"),
)
async def watch(args: argparse.Namespace) -> int:
    from statemachine import RunNotFound
    from statemachine.engine import offset_key, watch

    mid_line = False
    async with opened(args) as store:
        if args.after is not None:
            try:
                seq = offset_key(args.after)[0]
            except ValueError as exc:
                raise UsageProblem(f"--after: {exc}") from None
            record = await store.load(args.run_id)
            if record is None:
                raise RunNotFound(args.run_id)
            if seq > record.seq:
                raise UsageProblem(
                    f"--after {args.after}: run {args.run_id!r} is at seq {record.seq}; give an"
                    f" offset up to {record.seq} (each step's line ends with its offset), or"
                    " leave --after out to watch from the start"
                )
        async for item in watch(store, args.run_id, after=args.after, follow=args.follow):
            mid_line = _show(item, mid_line)
        run = await store.load(args.run_id)
    if mid_line:
        sys.stdout.write("\n")
    status = run.status if run is not None else "failed"
    return {"done": EXIT_DONE, "waiting": EXIT_WAITING, "running": EXIT_DONE}.get(
        status, EXIT_FAILED
    )


def _show(item: WatchItem, mid_line: bool) -> bool:
    """Print `item`; whether the output now stops in the middle of a line (of tokens)."""
    if item.kind == "text":
        sys.stdout.write(terminal_text(item.text))
        sys.stdout.flush()
        return not item.text.endswith("\n") if item.text else mid_line
    if mid_line:
        sys.stdout.write("\n")
    if item.event is not None:
        out.print(f"{event_line(item.event)}  [dim]offset {item.offset}[/]")
    elif item.kind == "started" and item.attempt > 1:
        out.print(f"  [yellow]↻[/] {item.seq:>4}  {shown(item.data.get('trigger'))}"
                  f" attempt {item.attempt}")  # fmt: skip
    elif item.kind == "failed":
        error = item.data.get("error")
        text = error_text(error if isinstance(error, dict) else None)
        out.print(f"  [yellow]![/] {item.seq:>4}  attempt {item.attempt}: {shown(text)}")
    elif item.kind == "stopped":
        out.print(f"  [dim]· run {shown(item.data.get('status'))}[/]")
    sys.stdout.flush()
    return False
