"""The `agentfsm` command: run, resume, inspect and draw durable agents.

Exit codes: 0 the run is done, 1 the run failed, 2 the command could not be carried out
(bad arguments or input, unknown agent or run, unusable model, unreachable store),
3 the run is waiting for an event.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import signal
import sys
import time
import traceback
from collections.abc import Sequence
from datetime import datetime
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, get_args

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from statemachine import (
    Graph,
    InvalidMemory,
    RendererMissing,
    Run,
    RunError,
    RunNotFound,
    Worker,
)
from statemachine._provenance import memory_at, why
from storage import Event, RedisStore, RunStatus, StorageError, Store, open_store
from storage.backup import export_runs, import_runs
from storage.queue import RunQueue
from storage.redis import redact

from ._agent import Agent
from ._report import render_report

__all__ = ["main"]

EXIT_DONE, EXIT_FAILED, EXIT_USAGE, EXIT_WAITING = 0, 1, 2, 3
GRAPH_FORMATS = ["mermaid", "dot", "svg", "png"]
DEMO_DATASET = [12.1, 11.8, 12.4, 12.0, 11.9, 12.3, 48.7, 12.2, 11.7, 12.1]

# Piped output gets room for whole run ids and timestamps instead of the 80-column default.
out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, highlight=False, soft_wrap=True)


class UsageProblem(Exception):
    """A one-line reason why the command cannot be carried out (exit code 2)."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="agentfsm", description="Durable AI agents as state machines.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=help, description=help)
        c.add_argument(
            "--store", help="store URL (default: $AGENTFSM_STORE, else .agentfsm/store.db)"
        )
        return c

    run = command("run", "start (or continue) a run of an agent and drive it to the end")
    run.add_argument("agent", metavar="MODULE:AGENT", help="where the Agent object is")
    run.add_argument("--input", required=True, metavar="JSON", help="the initial memory, as JSON")
    run.add_argument("--run-id", help="an id of your choice; an existing run with it is continued")
    run.add_argument("--model", help="pydantic-ai model name for the agent's LLM steps")

    demo = command("demo", "run the example data analyst end to end")
    demo.add_argument("--run-id", help="an id of your choice (default: a new one)")
    demo.add_argument(
        "--fail-at",
        metavar="STEP",
        choices=["detect"],
        help="make this step fail, to show recovery with `agentfsm resume`",
    )
    demo.add_argument(
        "--model", help="pydantic-ai model name (default: offline unless an API key is set)"
    )

    resume = command("resume", "continue a run from its last commit (a failed run is retried)")
    resume.add_argument("run_id", metavar="RUN_ID")
    resume.add_argument(
        "--agent", metavar="MODULE:AGENT", help="needed unless the agent is registered"
    )
    resume.add_argument("--model", help="pydantic-ai model name for the agent's LLM steps")
    resume.add_argument(
        "--wait",
        type=float,
        default=None,
        metavar="SECONDS",
        help="how long to wait for a crashed holder's lease (default: its ttl)",
    )

    send = command("send", "deliver an event to a waiting run, then drive the run on")
    send.add_argument("run_id", metavar="RUN_ID")
    send.add_argument("event", metavar="EVENT")
    send.add_argument("--data", default="null", metavar="JSON", help="the event's payload")
    send.add_argument(
        "--agent", metavar="MODULE:AGENT", help="needed unless the agent is registered"
    )

    retry = command("retry", "put a failed run back where it failed and drive it on")
    retry.add_argument("run_id", metavar="RUN_ID")
    retry.add_argument(
        "--agent", metavar="MODULE:AGENT", help="needed unless the agent is registered"
    )

    cancel = command("cancel", "stop a run for good (recorded with a reason)")
    cancel.add_argument("run_id", metavar="RUN_ID")
    cancel.add_argument("--reason", default="", help="why, for the record")
    cancel.add_argument(
        "--agent", metavar="MODULE:AGENT", help="needed unless the agent is registered"
    )

    runs = command("runs", "list runs, most recently updated first")
    runs.add_argument("--agent", metavar="NAME", help="only this agent's runs")
    runs.add_argument(
        "--status", choices=list(get_args(RunStatus)), help="only runs in this status"
    )
    runs.add_argument("--state", help="only runs in this state")
    runs.add_argument(
        "--since",
        type=_time,
        metavar="TIME",
        help="updated at or after TIME (ISO date/time, or a duration ago: 30s, 15m, 2h, 7d)",
    )
    runs.add_argument("--until", type=_time, metavar="TIME", help="updated before TIME")
    runs.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    command("gc", "delete runs whose retention ran out; clean the indexes")
    command("reindex", "rebuild the indexes of runs (by agent, status, time) from the runs")

    submit = command("submit", "queue a new run (or a stored one) for the workers")
    submit.add_argument("agent", metavar="MODULE:AGENT", help="where the Agent object is")
    submit.add_argument("--input", metavar="JSON", help="the initial memory, as JSON")
    submit.add_argument("--run-id", help="an id of your choice; a stored run with it is queued")
    worker = command("worker", "drive queued runs until SIGTERM/SIGINT (a second one: at once)")
    worker.add_argument(
        "--agents", required=True, metavar="MODULE:AGENT[,...]", help="the agents it serves"
    )
    worker.add_argument(
        "--concurrency", type=int, default=100, help="runs driven at once (default 100)"
    )
    worker.add_argument("--name", help="how it shows in `agentfsm workers`")
    worker.add_argument(
        "--heartbeat", type=float, default=2.0, help="seconds between heartbeats (default 2)"
    )
    worker.add_argument(
        "--reclaim-after",
        type=float,
        metavar="SECONDS",
        help="take over jobs of workers silent this long (default: 3 heartbeats, at least 5 s)",
    )
    command("workers", "the workers on this store: alive or not, what they hold; the queues")

    export = command("export", "write runs and their histories to a JSON Lines file")
    export.add_argument("run_ids", nargs="*", metavar="RUN_ID", help="these runs (default: all)")
    export.add_argument("--agent", metavar="NAME", help="every run of this agent")
    export.add_argument("-o", "--output", required=True, metavar="FILE", help="the .jsonl file")
    import_ = command("import", "write the runs of an export file into the store")
    import_.add_argument("file", metavar="FILE", help="a file written by `agentfsm export`")
    fork = command("fork", "start a new run from a past point of a run (the original stays)")
    fork.add_argument("run_id", metavar="RUN_ID")
    fork.add_argument(
        "--at", type=int, required=True, metavar="SEQ", help="right after this commit"
    )
    fork.add_argument("--run-id", dest="new_run_id", help="the new run's id (default: random)")
    fork.add_argument("--set", metavar="JSON", help="memory fields to change, as a JSON object")
    fork.add_argument(
        "--agent", metavar="MODULE:AGENT", help="needed unless the agent is registered"
    )

    timeouts = command(
        "timeouts", "fire the wait timeouts that are due (run it from cron, or let a worker)"
    )
    timeouts.add_argument(
        "--agent",
        action="append",
        metavar="MODULE:AGENT",
        help="only this agent's runs (repeatable); default: every registered agent",
    )

    graph = command("graph", "draw an agent's state graph; with --run, a run drawn on it")
    graph.add_argument("agent", metavar="MODULE:AGENT", help="where the Agent object is")
    graph.add_argument(
        "--run", metavar="RUN_ID", help="draw this run: its state, the path it took, failures"
    )
    graph.add_argument(
        "--format",
        choices=GRAPH_FORMATS,
        help="mermaid (default), dot, svg or png (svg and png need Graphviz's dot program);"
        " default: from the -o file's extension, else mermaid",
    )
    graph.add_argument(
        "-o", "--output", metavar="FILE", help="write to FILE (required for png), not stdout"
    )

    report = command("report", "write a run's HTML report: graph, timeline, memory, conversation")
    report.add_argument("run_id", metavar="RUN_ID")
    report.add_argument(
        "--agent", metavar="MODULE:AGENT", help="needed unless the agent is registered"
    )
    report.add_argument("-o", "--output", required=True, metavar="FILE", help="the .html file")

    show = command("show", "the run's state, status and memory")
    show.add_argument("run_id", metavar="RUN_ID")
    show.add_argument(
        "--at", type=int, metavar="SEQ", help="as it was right after commit SEQ (time travel)"
    )
    why_ = command("why", "which transition wrote a memory field, and what wrote it before")
    why_.add_argument("run_id", metavar="RUN_ID")
    why_.add_argument("field", metavar="FIELD")
    why_.add_argument("--at", type=int, metavar="SEQ", help="as of commit SEQ")
    history = command("history", "one line per committed transition")
    history.add_argument("run_id", metavar="RUN_ID")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return asyncio.run(_dispatch(args))
    except (UsageProblem, ValueError, RunError, StorageError) as exc:
        err.print(f"agentfsm: error: {escape(str(exc))}")
        return EXIT_USAGE
    except KeyboardInterrupt:
        err.print(
            "agentfsm: interrupted; the run continues from its last commit with `agentfsm resume`"
        )
        return 130


async def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "graph" and not args.run:  # no store needed: do not create one
        return _write_graph(load_agent(args.agent).graph(), args)
    store = open_store(args.store)
    try:
        match args.command:
            case "run":
                agent = _with_model(load_agent(args.agent), args.model)
                return (await _run(store, agent, _json_input(args.input), args.run_id))[0]
            case "demo":
                return await _demo(store, args)
            case "resume":
                return await _resume(store, args)
            case "send" | "retry" | "cancel":
                return await _control(store, args)
            case "runs":
                return await _runs(store, args)
            case "timeouts":
                return await _timeouts(store, args)
            case "gc":
                removed = await store.gc(time.time())
                out.print(f"removed {removed} expired run(s) or index entries")
                return EXIT_DONE
            case "reindex":
                out.print(f"indexed {await store.reindex()} run(s)")
                return EXIT_DONE
            case "submit":
                return await _submit(store, args)
            case "export":
                return await _export(store, args)
            case "import":
                return await _import(store, args)
            case "fork":
                return await _fork(store, args)
            case "worker":
                return await _worker(store, args)
            case "workers":
                return await _workers(store)
            case "graph":
                return await _graph(store, args)
            case "report":
                return await _report(store, args)
            case "show":
                return await _show(store, args.run_id, args.at)
            case "why":
                return await _why(store, args)
            case "history":
                return await _history(store, args.run_id)
        raise UsageProblem(f"unknown command {args.command!r}")
    finally:
        await store.close()


def load_agent(spec: str) -> Agent[Any]:
    """The `Agent` object named by "module.path:attribute"."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise UsageProblem(
            f"{spec!r} is not MODULE:AGENT (for example agents.examples.data_analyst:analyst)"
        )
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise UsageProblem(f"cannot import module {module_name!r}: {exc}") from None
    except Exception as exc:  # the user's module failed while it was imported
        where = ""
        if exc.__traceback__ is not None:
            frame = traceback.extract_tb(exc.__traceback__)[-1]
            where = f" ({frame.filename}:{frame.lineno})"
        raise UsageProblem(
            f"importing module {module_name!r} raised {type(exc).__name__}: {exc}{where}"
        ) from None
    agent = getattr(module, attr, None)
    if agent is None:
        raise UsageProblem(f"module {module_name!r} has no attribute {attr!r}")
    if not isinstance(agent, Agent):
        raise UsageProblem(f"{spec} is a {type(agent).__name__}, not an agents.Agent")
    return agent


def registered_agent(name: str) -> Agent[Any] | None:
    """The agent registered under `name` in the "agentfsm.agents" entry points, if any."""
    for ep in entry_points(group="agentfsm.agents"):
        if ep.name == name:
            return load_agent(ep.value)
    return None


def _with_model(agent: Agent[Any], model: str | None) -> Agent[Any]:
    if model:
        agent = agent.with_model(model)
    agent.check_models()
    return agent


def _json_input(text: str, option: str = "--input") -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageProblem(f"{option} is not JSON: {exc}") from None


async def _run(
    store: Store, agent: Agent[Any], memory: Any, run_id: str | None
) -> tuple[int, Run[Any]]:
    if not isinstance(memory, dict):
        raise UsageProblem(
            f"--input must be a JSON object of memory fields, not {type(memory).__name__}"
        )
    try:
        run = await agent.start(store, memory, run_id=run_id)
    except InvalidMemory as exc:
        raise UsageProblem(str(exc)) from None
    _say_model(agent)
    out.print(
        f"run [bold]{run.run_id}[/] of {agent.name} v{agent.version}: {run.state} ({run.status})"
    )
    return await _drive(run), run


async def _demo(store: Store, args: argparse.Namespace) -> int:
    from agents.examples.data_analyst import analyst

    if args.fail_at:
        os.environ["AGENTFSM_FAIL_AT"] = args.fail_at
    agent = _with_model(analyst, args.model)
    code, run = await _run(store, agent, {"dataset": DEMO_DATASET}, args.run_id)
    if run.status == "done":
        out.print()
        out.print(run.memory.report)
    elif run.status == "failed":
        store_arg = f" --store {redact(args.store)}" if args.store else ""
        out.print(
            f"\nThe run stopped at {run.state!r}; continue it with:"
            f"  agentfsm resume {run.run_id}{store_arg}"
        )
    return code


async def _agent_of(store: Store, args: argparse.Namespace) -> Agent[Any]:
    """The agent a stored run belongs to, ready to run its LLM steps."""
    return _with_model(await _stored_agent(store, args), getattr(args, "model", None))


async def _stored_agent(store: Store, args: argparse.Namespace) -> Agent[Any]:
    """The agent a stored run belongs to: `--agent`, else the registered one of its name."""
    record = await store.load(args.run_id)
    if record is None:
        raise RunNotFound(args.run_id)
    agent = load_agent(args.agent) if args.agent else registered_agent(record.agent)
    if agent is None:
        raise UsageProblem(
            f"run {args.run_id!r} belongs to agent {record.agent!r}, which is not registered:"
            " pass --agent MODULE:AGENT"
        )
    return agent


async def _control(store: Store, args: argparse.Namespace) -> int:
    agent = await _agent_of(store, args)
    run = await agent.resume(store, args.run_id, lease_wait=agent.lease_ttl + 1)
    async with run:  # the lease goes back whatever happens
        if args.command == "cancel":
            await run.cancel(args.reason)
            out.print(f"cancelled: [bold]{run.run_id}[/] at {run.state}")
            return EXIT_DONE
        if args.command == "send":
            event = await run.send(args.event, _json_input(args.data, "--data"))
        else:
            event = await run.retry()
        out.print(_line(event))
        return await _drive(run)


async def _resume(store: Store, args: argparse.Namespace) -> int:
    agent = await _agent_of(store, args)
    wait = args.wait if args.wait is not None else agent.lease_ttl + 1
    run = await agent.resume(store, args.run_id, lease_wait=wait)
    _say_model(agent)
    where = f"{run.state} (seq {run.seq}, {run.status})"
    out.print(f"run [bold]{run.run_id}[/] of {agent.name}: resuming at {where}")
    async with run:  # the lease goes back whatever happens
        if run.status == "failed":
            await run.retry()
            out.print(f"  retrying from {run.state}")
        return await _drive(run)


async def _drive(run: Run[Any]) -> int:
    requests = 0

    def progress(event: Event) -> None:
        nonlocal requests
        requests += (event.usage or {}).get("requests", 0)
        out.print(_line(event))

    await run.until_done(on_event=progress)
    out.print(
        f"{run.status}: [bold]{run.run_id}[/] at {run.state} after {run.seq} commits;"
        f" model requests made by this process: {requests}"
    )
    if run.status == "failed":
        last = (await run.history(run.seq))[0]
        if last.error:
            err.print(
                f"step {last.trigger!r} failed after {last.attempt} attempt(s):"
                f" {last.error.get('type')}: {escape(str(last.error.get('message')))}"
            )
        return EXIT_FAILED
    return {"done": EXIT_DONE, "waiting": EXIT_WAITING}.get(run.status, EXIT_FAILED)


def _line(e: Event) -> str:
    took = f"{(e.ended_at - e.started_at) * 1000:8.1f} ms"
    tokens = ""
    if e.usage:
        tokens = f"  tokens {e.usage.get('input_tokens', 0)}→{e.usage.get('output_tokens', 0)}"
    mark = "[red]✗[/]" if e.kind == "error" else "[green]✓[/]"
    note = f"  [red]{escape(str((e.error or {}).get('message', '')))}[/]" if e.error else ""
    return (
        f"  {mark} {e.seq:>4}  {e.trigger:<14} {e.source} → {e.dest:<14} {e.kind:<7}"
        f"{took}{tokens}{note}"
    )


def _say_model(agent: Agent[Any]) -> None:
    from agents._llm import model_name

    name = model_name(agent.model)
    if name.startswith("offline:"):
        out.print(f"model: {name} [yellow](offline: deterministic answers, no API key needed)[/]")
    elif agent.model is not None:
        out.print(f"model: {name}")


async def _runs(store: Store, args: argparse.Namespace) -> int:
    table = Table(box=None, header_style="bold")
    table.add_column("run", no_wrap=True)  # ids must stay whole: people copy them
    for name in ("agent", "state", "status", "seq", "updated", "holder", "times out"):
        table.add_column(name, no_wrap=True)
    query = {"agent": args.agent, "status": args.status, "state": args.state}
    found = await store.list_runs(**query, since=args.since, until=args.until, limit=args.limit)
    for run in found:
        table.add_row(run.run_id, f"{run.agent} v{run.version}", run.state, run.status,
                      str(run.seq), _when(run.updated_at), run.holder or "-",
                      "-" if run.deadline is None else _when(run.deadline))  # fmt: skip
    out.print(table)
    return EXIT_DONE


_AGO = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _time(text: str) -> float:
    """`--since`/`--until`: an ISO date or date-time (local time unless it says), or a
    duration ago such as 90s, 15m, 2h, 7d."""
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


async def _export(store: Store, args: argparse.Namespace) -> int:
    if args.run_ids and args.agent:
        raise UsageProblem("give RUN_IDs or --agent, not both")
    runs = events = 0
    try:
        # A CLI command: nothing else runs on its loop, so blocking file I/O is fine.
        with open(args.output, "w", encoding="utf-8") as f:  # noqa: ASYNC230
            try:
                async for line in export_runs(store, args.run_ids, agent=args.agent):
                    runs += line.startswith('{"run"')
                    events += line.startswith('{"event"')
                    f.write(line + "\n")
            except KeyError as exc:
                raise UsageProblem(str(exc.args[0])) from None
    except OSError as exc:
        raise UsageProblem(f"cannot write {args.output}: {exc.strerror or exc}") from None
    out.print(f"wrote {runs} run(s) and {events} event(s) to {escape(args.output)}")
    return EXIT_DONE


async def _import(store: Store, args: argparse.Namespace) -> int:
    try:
        with open(args.file, encoding="utf-8") as f:  # noqa: ASYNC230  (as in _export)
            result = await import_runs(store, f)
    except OSError as exc:
        raise UsageProblem(f"cannot read {args.file}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise UsageProblem(f"{args.file}: {exc}") from None
    out.print(f"imported {len(result.imported)} run(s) with {result.events} event(s)")
    if result.skipped:
        out.print(
            f"skipped {len(result.skipped)} run(s) this store has already: "
            + escape(", ".join(result.skipped))
        )
    return EXIT_DONE


async def _fork(store: Store, args: argparse.Namespace) -> int:
    agent = await _stored_agent(store, args)
    update = _json_input(args.set, "--set") if args.set else None
    if update is not None and not isinstance(update, dict):
        raise UsageProblem("--set must be a JSON object of memory fields")
    try:
        run = await agent.fork(
            store, args.run_id, args.at, new_run_id=args.new_run_id, memory_update=update
        )
    except InvalidMemory as exc:
        raise UsageProblem(str(exc)) from None
    out.print(
        f"forked {escape(args.run_id)} at seq {args.at} as [bold]{escape(run.run_id)}[/]:"
        f" {escape(run.state)} ({run.status}); go on with: agentfsm resume {escape(run.run_id)}"
    )
    return EXIT_DONE


async def _submit(store: Store, args: argparse.Namespace) -> int:
    agent = load_agent(args.agent)
    if args.input is None:
        if not args.run_id:
            raise UsageProblem("give --input JSON for a new run, or --run-id of a stored one")
        await agent.enqueue(store, args.run_id)
        out.print(f"queued {escape(args.run_id)} for the workers of {escape(agent.name)}")
        return EXIT_DONE
    memory = _json_input(args.input)
    if not isinstance(memory, dict):
        raise UsageProblem(
            f"--input must be a JSON object of memory fields, not {type(memory).__name__}"
        )
    try:
        run_id = await agent.submit(store, memory, run_id=args.run_id)
    except InvalidMemory as exc:
        raise UsageProblem(str(exc)) from None
    out.print(f"queued {escape(run_id)} for the workers of {escape(agent.name)}")
    return EXIT_DONE


async def _worker(store: Store, args: argparse.Namespace) -> int:
    agents = [_with_model(load_agent(spec.strip()), None) for spec in args.agents.split(",")]
    if not isinstance(store, RedisStore):
        raise UsageProblem(
            "workers share runs through Redis: give --store redis://... (or $AGENTFSM_STORE)"
        )

    def finished(run: Run[Any], event: Event) -> None:
        if event.status != "running":
            out.print(f"{escape(run.run_id)}: {event.status} at {escape(event.dest)}")

    worker = Worker(
        store,
        agents,
        concurrency=args.concurrency,
        name=args.name,
        heartbeat=args.heartbeat,
        reclaim_after=args.reclaim_after,
        on_event=finished,
    )
    loop = asyncio.get_running_loop()
    signals = 0

    def on_signal(signum: int) -> None:
        nonlocal signals
        signals += 1
        if signals > 1:  # everything is committed or runs again from its last commit
            err.print("agentfsm worker: second signal, exiting at once")
            os._exit(128 + signum)
        err.print(
            f"agentfsm worker {worker.name}: stopping: finishing the steps in flight and"
            " handing their runs back (signal again to exit at once)"
        )
        worker.stop()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    out.print(
        f"worker {escape(worker.name)} serving {', '.join(a.name for a in agents)}"
        f" ({args.concurrency} at once) on"
        f" {escape(redact(args.store or os.environ.get('AGENTFSM_STORE', '')))}"
    )
    try:
        await worker.run()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
    out.print(f"worker {escape(worker.name)} stopped after {worker.driven} job(s)")
    return EXIT_DONE


async def _workers(store: Store) -> int:
    if not isinstance(store, RedisStore):
        raise UsageProblem("workers share runs through Redis: give --store redis://...")
    queue = RunQueue(store)
    beats = await queue.workers()
    now = time.time()
    table = Table(box=None, header_style="bold")
    for name in ("worker", "state", "agents", "runs held", "holding", "last beat"):
        table.add_column(name, no_wrap=name in ("worker", "holding"))
    for b in beats:
        alive = b.alive(now, 2.0)
        state = ("stopping" if b.stopping else "alive") if alive else "dead"
        shown = ", ".join(b.holding[:3]) + (" ..." if len(b.holding) > 3 else "")
        table.add_row(b.name, state, ", ".join(b.agents), f"{len(b.holding)}/{b.concurrency}",
                      shown or "-", f"{now - b.beat_at:.0f} s ago")  # fmt: skip
    out.print(table if beats else "no workers have signed on to this store")
    agents = sorted({a for b in beats for a in b.agents})
    if agents:
        queued, pending = await queue.waiting(agents), await queue.pending(agents)
        out.print("queues: " + ", ".join(
            f"{a}: {queued[a]} queued, {pending[a]} in hand" for a in agents
        ))  # fmt: skip
    return EXIT_DONE


async def _timeouts(store: Store, args: argparse.Namespace) -> int:
    if args.agent:
        agents = [load_agent(spec) for spec in args.agent]
    else:
        agents = [load_agent(ep.value) for ep in entry_points(group="agentfsm.agents")]
    fired = 0
    for agent in agents:
        for run_id in await agent.fire_due(store):
            out.print(f"{escape(run_id)}: {escape(agent.name)} timed out")
            fired += 1
    out.print(f"fired {fired} due timeout(s)")
    return EXIT_DONE


async def _graph(store: Store, args: argparse.Namespace) -> int:
    agent = load_agent(args.agent)
    record = await store.load(args.run)
    if record is None:
        raise RunNotFound(args.run)
    return _write_graph(agent.graph(run=record, events=await store.history(args.run)), args)


def _write_graph(graph: Graph, args: argparse.Namespace) -> int:
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
    if not args.output:
        sys.stdout.write(drawn if isinstance(drawn, str) else drawn.decode())
        return EXIT_DONE
    _save(args.output, drawn)
    out.print(f"wrote {escape(args.output)} ({fmt})")
    return EXIT_DONE


def _save(path: str, data: str | bytes) -> None:
    try:
        if isinstance(data, bytes):
            Path(path).write_bytes(data)
        else:
            Path(path).write_text(data, encoding="utf-8")
    except OSError as exc:
        raise UsageProblem(f"cannot write {path}: {exc.strerror or exc}") from None


async def _report(store: Store, args: argparse.Namespace) -> int:
    agent = await _stored_agent(store, args)
    _save(args.output, await render_report(agent, store, args.run_id))
    out.print(f"wrote {escape(args.output)}: the report of run {escape(args.run_id)}")
    return EXIT_DONE


async def _show(store: Store, run_id: str, at: int | None) -> int:
    run = await store.load(run_id)
    if run is None:
        raise RunNotFound(run_id)
    if at is None:
        state, status, seq, memory = run.state, run.status, run.seq, run.memory
    else:
        events = await store.history(run_id)
        try:
            state, memory = memory_at(events, at)
        except ValueError as exc:
            raise UsageProblem(f"run {run_id!r}: {exc}") from None
        status, seq = events[at].status, at
    out.print(
        f"run      {run.run_id}\nagent    {run.agent} v{run.version}\nstate    {state}"
        f"\nstatus   {status}\nseq      {seq}"
        + (f"\nholder   {run.holder or '-'}" if at is None else f" (of {run.seq})")
    )
    out.print("memory")
    out.print_json(json.dumps(memory))
    return EXIT_DONE


async def _why(store: Store, args: argparse.Namespace) -> int:
    events = await store.history(args.run_id)
    if not events:
        raise RunNotFound(args.run_id)
    try:
        answer = why(events, args.field, at=args.at)
    except ValueError as exc:
        raise UsageProblem(f"run {args.run_id!r}: {exc}") from None
    out.print(escape(answer.describe(width=max(out.width - 20, 40))))
    return EXIT_DONE


async def _history(store: Store, run_id: str) -> int:
    events = await store.history(run_id)
    if not events:
        raise RunNotFound(run_id)
    table = Table(
        "seq",
        "trigger",
        "from → to",
        "kind",
        "duration",
        "attempt",
        "tokens",
        "status",
        box=None,
        header_style="bold",
    )
    for e in events:
        tokens = (
            f"{e.usage.get('input_tokens', 0)}→{e.usage.get('output_tokens', 0)}" if e.usage else ""
        )
        table.add_row(
            str(e.seq),
            e.trigger,
            f"{e.source or '·'} → {e.dest}",
            e.kind,
            f"{(e.ended_at - e.started_at) * 1000:.1f} ms",
            str(e.attempt),
            tokens,
            e.status + (f" ({e.error.get('type')})" if e.error else ""),
        )
    out.print(table)
    return EXIT_DONE


if __name__ == "__main__":
    sys.exit(main())
