"""Commands of the shared work queue (`Store.queue`, on any store): submit, worker, workers."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import TYPE_CHECKING, Any

from ._agents import load_agent, registered_names, with_model
from ._command import EXIT_DONE, Commands, UsageProblem, arg, at_least
from ._output import err, out, shown
from ._store import opened, store_url
from .running import memory_input

if TYPE_CHECKING:
    import argparse

    from statemachine import Run
    from storage import Event

__all__ = ["commands"]

commands = Commands()


@commands.command(
    "submit",
    "queue a new run (or a stored one) for the workers",
    arg("agent", metavar="MODULE:AGENT", help="where the Agent object is"),
    arg("--input", metavar="JSON", help="the initial memory, as JSON"),
    arg("--run-id", help="an id of your choice; a stored run with it is queued"),
)
async def submit(args: argparse.Namespace) -> int:
    from statemachine import InvalidMemory

    if args.input is None and not args.run_id:
        raise UsageProblem("give --input JSON for a new run, or --run-id of a stored one")
    memory = None if args.input is None else memory_input(args.input)
    async with opened(args) as store:
        agent = load_agent(args.agent, store)
        if memory is None:
            await agent.enqueue(store, args.run_id)
            run_id = args.run_id
        else:
            try:
                run_id = await agent.submit(store, memory, run_id=args.run_id)
            except InvalidMemory as exc:
                raise UsageProblem(str(exc)) from None
    out.print(f"queued {shown(run_id)} for the workers of {shown(agent.name)}")
    return EXIT_DONE


@commands.command(
    "worker",
    "drive queued runs until SIGTERM/SIGINT (a second one: at once)",
    arg("--agents", required=True, metavar="MODULE:AGENT[,...]", help="the agents it serves"),
    arg("--concurrency", type=at_least(1), default=100, help="runs driven at once (default 100)"),
    arg("--name", help="how it shows in `agentfsm workers`"),
    arg(
        "--heartbeat",
        type=at_least(0.01, float),
        default=2.0,
        help="seconds between heartbeats (default 2)",
    ),
    arg(
        "--reclaim-after",
        type=at_least(0.01, float),
        metavar="SECONDS",
        help="take over jobs of workers silent this long (default: 3 heartbeats, at least 5 s)",
    ),
)
async def worker(args: argparse.Namespace) -> int:
    from statemachine import Worker
    from storage.url import redact

    specs = [spec.strip() for spec in args.agents.split(",")]
    async with opened(args) as store:
        agents = [with_model(load_agent(spec, store), None) for spec in specs]

        def finished(run: Run[Any], event: Event) -> None:
            if event.status != "running":
                out.print(f"{shown(run.run_id)}: {event.status} at {shown(event.dest)}")

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
                f"agentfsm worker {shown(worker.name)}: stopping: finishing the steps in flight"
                " and handing their runs back (signal again to exit at once)"
            )
            worker.stop()

        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, on_signal, signum)
        out.print(
            f"worker {shown(worker.name)} serving {shown(', '.join(a.name for a in agents))}"
            f" ({args.concurrency} at once) on {shown(redact(store_url(args)))}"
        )
        try:
            await worker.run()
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)
    out.print(f"worker {shown(worker.name)} stopped after {worker.driven} job(s)")
    return EXIT_DONE


@commands.command(
    "workers",
    "the workers on this store (alive or not, what they hold); the queues",
    arg(
        "--agent",
        action="append",
        metavar="NAME",
        help="also show this agent's queue (repeatable); by default the queues of the"
        " workers' agents, the registered agents and the agents of running runs",
    ),
)
async def workers(args: argparse.Namespace) -> int:
    from rich.table import Table

    async with opened(args) as store:
        queue = store.queue
        beats = await queue.workers()
        names = {a for b in beats for a in b.agents} | set(args.agent or ())
        names |= set(registered_names())
        names |= {r.agent for r in await store.list_runs(status="running", limit=1000)}
        agents = sorted(names)
        queued, pending = await queue.waiting(agents), await queue.pending(agents)
    now = time.time()
    if beats:
        table = Table(box=None, header_style="bold")
        for name in ("worker", "state", "agents", "runs held", "holding", "last beat"):
            table.add_column(name, no_wrap=name in ("worker", "holding"))
        for b in beats:
            alive = b.alive(now, 2.0)
            state = ("stopping" if b.stopping else "alive") if alive else "dead"
            held = ", ".join(b.holding[:3]) + (" ..." if len(b.holding) > 3 else "")
            table.add_row(shown(b.name), state, shown(", ".join(b.agents)),
                          f"{len(b.holding)}/{b.concurrency}", shown(held or "-"),
                          f"{now - b.beat_at:.0f} s ago")  # fmt: skip
        out.print(table)
    else:
        out.print("no workers have signed on to this store")
    serving = [b for b in beats if b.alive(now, 2.0)]
    out.print(
        "queues: "
        + (
            ", ".join(
                f"{shown(a)}: {queued.get(a, 0)} queued, {pending.get(a, 0)} in hand"
                for a in agents
            )
            or "none"
        )
    )
    waiting = sum(queued.get(a, 0) for a in agents)
    if waiting and not serving:
        out.print(
            f"{waiting} run(s) wait for a worker: start one with"
            " `agentfsm worker --agents MODULE:AGENT[,...]`"
        )
    return EXIT_DONE
