"""Commands that read runs: runs, show, history, why, graph, report."""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from ._agents import known_agent, load_agent
from ._command import AGENT, EXIT_DONE, Commands, UsageProblem, arg, at_least
from ._output import error_text, out, shown
from ._store import opened

if TYPE_CHECKING:
    import argparse

    from statemachine.engine import Graph
    from storage import Event, Store

__all__ = ["commands", "save"]

commands = Commands()

STATUSES = ["running", "waiting", "done", "failed", "cancelled"]
"""`storage.RunStatus`, spelled out so that building the parser imports no storage code."""
GRAPH_FORMATS = ["mermaid", "dot", "svg", "png"]
_AGO = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _time(text: str) -> float:
    """`--since`/`--until`: an ISO date or date-time (local time unless it says), or a
    duration ago such as 90s, 15m, 2h, 7d."""
    import argparse

    if text[:-1].replace(".", "", 1).isdigit() and text[-1:] in _AGO:
        return time.time() - float(text[:-1]) * _AGO[text[-1]]
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a time: give an ISO date or date-time, or 30s, 15m, 2h, 7d ago"
        ) from None


def _when(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S")


@commands.command(
    "runs",
    "list runs, most recently updated first",
    arg("--agent", metavar="NAME", help="only this agent's runs"),
    arg("--status", choices=STATUSES, help="only runs in this status"),
    arg("--state", help="only runs in this state"),
    arg(
        "--since",
        type=_time,
        metavar="TIME",
        help="updated at or after TIME (ISO date/time, or a duration ago: 30s, 15m, 2h, 7d)",
    ),
    arg("--until", type=_time, metavar="TIME", help="updated before TIME"),
    arg("--limit", type=at_least(1), default=50, help="at most this many (default 50)"),
)
async def runs(args: argparse.Namespace) -> int:
    from rich.table import Table

    from ..spending._usage_text import usage_line

    query = {"agent": args.agent, "status": args.status, "state": args.state}
    async with opened(args) as store:
        found = await store.list_runs(**query, since=args.since, until=args.until,
                                      limit=args.limit)  # fmt: skip
    if not found:
        filtered = any(v is not None for v in (*query.values(), args.since, args.until))
        out.print("no runs match these filters" if filtered else "no runs in this store yet")
        return EXIT_DONE
    table = Table(box=None, header_style="bold")
    table.add_column("run", no_wrap=True)  # ids must stay whole: people copy them
    for name in ("agent", "state", "status", "seq", "updated", "holder", "times out", "usage"):
        table.add_column(name, no_wrap=True)
    for r in found:
        table.add_row(shown(r.run_id), f"{shown(r.agent)} v{r.version}", shown(r.state),
                      r.status, str(r.seq), _when(r.updated_at), shown(r.holder or "-"),
                      "-" if r.deadline is None else _when(r.deadline),
                      usage_line(r.usage))  # fmt: skip
    out.print(table)
    return EXIT_DONE


def _last_error(events: list[Event]) -> Event | None:
    return next((e for e in reversed(events) if e.kind == "error" and e.error), None)


@commands.command(
    "show",
    "a run's state, status and memory (and the error that failed it)",
    arg("run_id", metavar="RUN_ID"),
    arg("--at", type=at_least(0), metavar="SEQ", help="as it was right after commit SEQ"),
    arg("--agent", metavar="MODULE:AGENT", help="the run's agent, for its declared budget"),
)
async def show(args: argparse.Namespace) -> int:
    from statemachine import RunNotFound
    from statemachine.engine import memory_at

    from ..spending._budget import limits_line, run_limits
    from ..spending._usage_text import usage_line
    from ._agents import load_agent, registered_agent

    async with opened(args) as store:
        run = await store.load(args.run_id)
        if run is None:
            raise RunNotFound(args.run_id)
        if args.at is None:
            state, status, seq, memory = run.state, run.status, run.seq, dict(run.memory)
            failure = await _failure(store, args.run_id, run.seq) if status == "failed" else None
        else:
            events = await store.history(args.run_id)
            try:
                state, memory = memory_at(events, args.at)
            except ValueError as exc:
                raise UsageProblem(f"run {args.run_id!r}: {exc}") from None
            status, seq = events[args.at].status, args.at
            failure = events[args.at] if events[args.at].error else None
        agent = load_agent(args.agent, store) if args.agent else registered_agent(run.agent, store)
        limits = await run_limits(store, agent, args.run_id)
    lines = [
        f"run      {shown(run.run_id)}",
        f"agent    {shown(run.agent)} v{run.version}",
        f"state    {shown(state)}",
        f"status   {status}",
        f"seq      {seq}" + ("" if args.at is None else f" (of {run.seq})"),
    ]
    if args.at is None:
        lines.append(f"holder   {shown(run.holder or '-')}")
        lines.append(f"usage    {usage_line(run.usage)}")
        if limits:
            lines.append(f"limits   {limits_line(limits)}")
    if failure is not None:
        lines.append(
            f"error    step {shown(failure.trigger)!r} (seq {failure.seq}, attempt"
            f" {failure.attempt}): [red]{shown(error_text(failure.error))}[/]"
        )
        if args.at is None and status == "failed":
            lines.append(f"retry    agentfsm retry {shown(run.run_id)}  (from {shown(state)})")
    out.print("\n".join(lines))
    out.print("memory")
    # Sorted, so that `show` and `show --at` list the fields in the same order.
    out.print_json(json.dumps(memory, sort_keys=True))
    return EXIT_DONE


async def _failure(store: Store, run_id: str, seq: int) -> Event | None:
    """The error event that failed the run: its last event, else the latest error before."""
    last = await store.history(run_id, seq)
    if last and last[0].error:
        return last[0]
    return _last_error(await store.history(run_id))


@commands.command(
    "why",
    "which transition wrote a memory field, and what wrote it before",
    arg("run_id", metavar="RUN_ID"),
    arg("field", metavar="FIELD"),
    arg("--at", type=at_least(0), metavar="SEQ", help="as of commit SEQ"),
)
async def why(args: argparse.Namespace) -> int:
    from statemachine import RunNotFound
    from statemachine.engine import why

    async with opened(args) as store:
        events = await store.history(args.run_id)
    if not events:
        raise RunNotFound(args.run_id)
    try:
        answer = why(events, args.field, at=args.at)
    except ValueError as exc:
        raise UsageProblem(f"run {args.run_id!r}: {exc}") from None
    for line in answer.describe(width=max(out.width - 20, 40)).splitlines():
        out.print(shown(line))
    return EXIT_DONE


@commands.command(
    "history",
    "one line per committed transition, then each error's message",
    arg("run_id", metavar="RUN_ID"),
)
async def history(args: argparse.Namespace) -> int:
    from rich.table import Table

    from statemachine import RunNotFound

    async with opened(args) as store:
        events = await store.history(args.run_id)
    if not events:
        raise RunNotFound(args.run_id)
    table = Table("seq", "trigger", "from → to", "kind", "duration", "attempt", "tokens",
                  "status", box=None, header_style="bold")  # fmt: skip
    for e in events:
        tokens = (
            f"{e.usage.get('input_tokens', 0)}→{e.usage.get('output_tokens', 0)}" if e.usage else ""
        )
        table.add_row(
            str(e.seq),
            shown(e.trigger),
            f"{shown(e.source or '·')} → {shown(e.dest)}",
            e.kind,
            f"{(e.ended_at - e.started_at) * 1000:.1f} ms",
            str(e.attempt),
            tokens,
            e.status + (f" ({shown((e.error or {}).get('type'))})" if e.error else ""),
        )
    out.print(table)
    errors = [e for e in events if e.error]
    if errors:
        out.print("errors")
    for e in errors:
        out.print(
            f"  seq {e.seq} {shown(e.trigger)}, attempt {e.attempt}:"
            f" [red]{shown(error_text(e.error))}[/]"
        )
    return EXIT_DONE


@commands.command(
    "graph",
    "draw an agent's state graph; with --run, a run drawn on it",
    arg("agent", metavar="MODULE:AGENT", help="where the Agent object is"),
    arg("--run", metavar="RUN_ID", help="draw this run: its state, the path it took, failures"),
    arg(
        "--format",
        choices=GRAPH_FORMATS,
        help="mermaid (default), dot, svg (laid out by Graphviz's dot if installed, else in"
        " Python) or png (needs dot); default: from the -o file's extension, else mermaid",
    ),
    arg("-o", "--output", metavar="FILE", help="write to FILE (required for png), not stdout"),
)
async def graph(args: argparse.Namespace) -> int:
    if not args.run:  # no store needed: do not create one
        return _write_graph(load_agent(args.agent).graph(), args)
    from statemachine import RunNotFound

    async with opened(args) as store:
        agent = load_agent(args.agent, store)
        record = await store.load(args.run)
        if record is None:
            raise RunNotFound(args.run)
        events = await store.history(args.run)
    return _write_graph(agent.graph(run=record, events=events), args)


def _write_graph(graph: Graph, args: argparse.Namespace) -> int:
    from statemachine.errors import RendererMissing

    fmt = args.format
    if fmt is None:
        suffix = os.path.splitext(args.output or "")[1].lstrip(".").lower()
        fmt = {"mmd": "mermaid", "gv": "dot"}.get(suffix, suffix)
        fmt = fmt if fmt in GRAPH_FORMATS else "mermaid"
    if fmt == "png" and not args.output:
        raise UsageProblem("PNG is binary: give -o FILE.png (or --format svg for text)")
    drawn: str | bytes
    try:
        if fmt == "png":
            drawn = graph.png()
        elif fmt == "svg":
            drawn = graph.svg()
        else:
            drawn = graph.dot() if fmt == "dot" else graph.mermaid()
    except RendererMissing as exc:
        raise UsageProblem(str(exc)) from None
    if not args.output:  # the drawing itself, for a pipe or a file: not rich text
        sys.stdout.write(drawn if isinstance(drawn, str) else drawn.decode())
        return EXIT_DONE
    save(args.output, drawn)
    out.print(f"wrote {shown(args.output)} ({fmt})")
    return EXIT_DONE


def save(path: str, data: str | bytes) -> None:
    try:
        if isinstance(data, bytes):
            Path(path).write_bytes(data)
        else:
            Path(path).write_text(data, encoding="utf-8")
    except OSError as exc:
        raise UsageProblem(f"cannot write {path}: {exc.strerror or exc}") from None


@commands.command(
    "report",
    "write a run's HTML report: error, graph, timeline, memory, conversation",
    arg("run_id", metavar="RUN_ID"),
    AGENT,
    arg("-o", "--output", required=True, metavar="FILE", help="the .html file"),
)
async def report(args: argparse.Namespace) -> int:
    from .._report import render_report

    async with opened(args) as store:
        agent = await known_agent(store, args)
        page = await render_report(agent, store, args.run_id)
    save(args.output, page)
    out.print(f"wrote {shown(args.output)}: the report of run {shown(args.run_id)}")
    if agent is None:
        out.print(
            "  without its graph: the run's agent is not registered; pass --agent MODULE:AGENT"
            " to draw it"
        )
    return EXIT_DONE
