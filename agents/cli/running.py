"""Commands that drive runs: run, demo, resume, send, retry, cancel, fork."""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

from ._agents import load_agent, quiet_pydantic_ai, stored_agent, with_model
from ._command import (
    AGENT,
    EXIT_DONE,
    EXIT_FAILED,
    EXIT_WAITING,
    RUN_EXITS,
    Commands,
    UsageProblem,
    arg,
    at_least,
)
from ._output import error_text, event_line, out, say_model, shown
from ._store import opened, store_url

if TYPE_CHECKING:
    import argparse

    from statemachine import Run
    from storage import Event, Store

    from .._agent import Agent

__all__ = ["commands", "drive", "json_input"]

commands = Commands(RUN_EXITS)

DEMO_DATASET = [12.1, 11.8, 12.4, 12.0, 11.9, 12.3, 48.7, 12.2, 11.7, 12.1]
MODEL = arg("--model", help="pydantic-ai model name for the agent's LLM steps")
DRY_RUN = arg("--dry-run", action="store_true", help="say what it would commit; commit nothing")


def json_input(text: str, option: str = "--input") -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageProblem(f"{option} is not JSON: {exc}") from None


def memory_input(text: str) -> dict[str, Any]:
    memory = json_input(text)
    if not isinstance(memory, dict):
        raise UsageProblem(
            f"--input must be a JSON object of memory fields, not {type(memory).__name__}"
        )
    return memory


@commands.command(
    "run",
    "start (or continue) a run of an agent and drive it to the end (workers serving the agent"
    " take it instead)",
    arg("agent", metavar="MODULE:AGENT", help="where the Agent object is"),
    arg("--input", required=True, metavar="JSON", help="the initial memory, as JSON"),
    arg("--run-id", help="an id of your choice; an existing run with it is continued"),
    MODEL,
    DRY_RUN,
)
async def run(args: argparse.Namespace) -> int:
    from statemachine import InvalidMemory

    from .._operations import check_action, do_action

    memory = memory_input(args.input)
    async with opened(args) as store:
        agent = with_model(load_agent(args.agent, store), args.model)
        try:
            plan = await check_action(
                store, args.run_id or "", "start", machine=agent, drive=True, memory=memory
            )
        except InvalidMemory as exc:
            raise UsageProblem(str(exc)) from None
        if args.dry_run:
            out.print(f"would: {shown(plan.commits)}; then: {shown(plan.then)}")
            out.print("nothing committed")
            return EXIT_DONE
        if plan.handed == "queue":  # workers serve the agent: the engine hands it to them
            done = await do_action(
                store, args.run_id or "", "start", machine=agent, memory=memory
            )  # fmt: skip
            out.print(
                f"run [bold]{shown(done.run_id)}[/] of {shown(agent.name)}: {shown(done.then)}"
            )
            return EXIT_DONE
        return (await start_and_drive(store, agent, memory, args))[0]


async def start_and_drive(
    store: Store, agent: Agent[Any], memory: dict[str, Any], args: argparse.Namespace
) -> tuple[int, Run[Any]]:
    from statemachine import InvalidMemory

    try:
        run = await agent.start(store, memory, run_id=args.run_id, hold=True)  # driven below
    except InvalidMemory as exc:
        raise UsageProblem(str(exc)) from None
    say_model(agent)
    out.print(
        f"run [bold]{shown(run.run_id)}[/] of {shown(agent.name)} v{agent.version}:"
        f" {shown(run.state)} ({run.status})"
    )
    if run.status == "failed":
        out.print("  it had failed before: nothing runs now, and --input is not used")
    return await drive(run, args), run


@commands.command(
    "demo",
    "run the example data analyst end to end",
    arg("--run-id", help="an id of your choice (default: a new one)"),
    arg(
        "--fail-at",
        metavar="STEP",
        choices=["detect"],
        help="make this step fail, to show recovery with `agentfsm resume`",
    ),
    arg("--model", help="pydantic-ai model name (default: offline unless an API key is set)"),
)
async def demo(args: argparse.Namespace) -> int:
    from ..examples.data_analyst import analyst

    quiet_pydantic_ai()
    if args.fail_at:
        os.environ["AGENTFSM_FAIL_AT"] = args.fail_at
    agent = with_model(analyst, args.model)
    async with opened(args) as store:
        code, run = await start_and_drive(store, agent, {"dataset": DEMO_DATASET}, args)
    if run.status == "done":
        out.print()
        out.print(shown_text(str(run.memory.report)))
    elif run.status == "failed":
        again = shown(command_line("resume", run.run_id, args))
        out.print(f"\nThe run stopped at {shown(run.state)!r}; continue it with:  {again}")
    out.print(_what_next(run.run_id, args))
    return code


def _what_next(run_id: str, args: argparse.Namespace) -> str:
    """Where the demo's run is stored, and the commands a newcomer tries next."""
    from storage.url import redact

    url = store_url(args)
    where = shown(redact(url))
    if url.startswith("memory://"):
        return f"\nstored in {where}: gone with this process (leave out --store to keep it)"
    default = "" if args.store or os.environ.get("AGENTFSM_STORE") else " (the default store)"
    lines = [f"\nstored in {where}{default}; try next:"]
    for command, extra, what in [
        ("history", "", "one line per commit"),
        ("show", "", "state, status and memory"),
        ("report", f" -o {run_id}.html", "the run as a web page"),
    ]:
        lines.append(f"  {shown(command_line(command, run_id + extra, args)):<60} # {what}")
    if not args.fail_at:
        lines.append(f"  {'agentfsm demo --fail-at detect':<60} # a run that fails, to resume")
    return "\n".join(lines)


def shown_text(text: str) -> str:
    """Several lines of a run's text (a model's report): each line `shown`."""
    return "\n".join(shown(line) for line in text.splitlines())


@commands.command(
    "resume",
    "continue a run from its last commit (a failed run is retried); workers serving the agent"
    " take it instead",
    arg("run_id", metavar="RUN_ID"),
    AGENT,
    MODEL,
    arg(
        "--wait",
        type=at_least(0, float),
        default=None,
        metavar="SECONDS",
        help="how long to wait for a crashed holder's lease (default: its ttl)",
    ),
    DRY_RUN,
)
async def resume(args: argparse.Namespace) -> int:
    from .._operations import check_action, do_action

    async with opened(args) as store:
        agent = with_model(await stored_agent(store, args), args.model)
        plan = await check_action(store, args.run_id, "resume", machine=agent)  # or Refused
        if args.dry_run:
            out.print(f"would: {shown(plan.commits)}; then: {shown(plan.then)}")
            out.print(f"nothing committed (the same without --dry-run: {shown(plan.command)})")
            return EXIT_DONE
        wait = args.wait if args.wait is not None else agent.lease_ttl + 1
        if plan.handed == "queue":  # workers serve the agent: the engine hands it to them
            done = await do_action(store, args.run_id, "resume", machine=agent, lease_wait=wait)
            if done.event is not None:
                out.print(event_line(done.event))
            out.print(f"{done.status}: [bold]{shown(args.run_id)}[/]; {shown(done.then)}")
            return EXIT_DONE
        run = await agent.resume(store, args.run_id, lease_wait=wait)
        say_model(agent)
        where = f"{shown(run.state)} (seq {run.seq}, {run.status})"
        out.print(f"run [bold]{shown(run.run_id)}[/] of {shown(agent.name)}: resuming at {where}")
        async with run:  # the lease goes back whatever happens
            if plan.retry_first:  # failed, or parked by a budget
                await run.retry()
                out.print(f"  retrying from {shown(run.state)}")
            return await drive(run, args)


def command_line(command: str, run_id: str, args: argparse.Namespace) -> str:
    """`agentfsm COMMAND RUN_ID` with the --agent and --store this command was given."""
    from storage.url import redact

    line = f"agentfsm {command} {run_id}"
    agent = getattr(args, "agent", None)
    if agent and args.command != "demo":
        line += f" --agent {agent}"
    return line + (f" --store {redact(args.store)}" if args.store else "")


async def drive(run: Run[Any], args: argparse.Namespace) -> int:
    """Drive `run` to a final, failed or waiting state, printing each commit; the exit code."""
    requests = 0

    def progress(event: Event) -> None:
        nonlocal requests
        requests += (event.usage or {}).get("requests", 0)
        out.print(event_line(event))

    from ..spending._ratelimit import on_wait

    def waiting(key: str, seconds: float, why: str) -> None:
        out.print(f"  [dim]waiting {seconds:.2f} s for rate limit {shown(key)} ({why})[/]")

    on_wait.append(waiting)
    try:
        await run.until_done(on_event=progress)
    finally:
        on_wait.remove(waiting)
    out.print(
        f"{run.status}: [bold]{shown(run.run_id)}[/] at {shown(run.state)} after {run.seq}"
        f" commits; model requests made by this process: {requests}"
    )
    if run.status == "failed":
        from ._output import err

        if run.error:
            err.print(
                f"step {shown(run.error.get('trigger'))!r} failed after"
                f" {run.error.get('attempt')} attempt(s): {shown(error_text(run.error))}"
            )
        if args.command != "demo":  # the demo tells its own story (resume)
            err.print(f"retry it from there with: {shown(command_line('retry', run.run_id, args))}")
        return EXIT_FAILED
    return {"done": EXIT_DONE, "waiting": EXIT_WAITING}.get(run.status, EXIT_FAILED)


def _engine_args(args: argparse.Namespace) -> dict[str, Any]:
    """The engine's arguments of the action `args.command` (see `agents._operations`)."""
    if args.command == "send":
        return {"event": args.event, "payload": json_input(args.data, "--data")}
    if args.command == "cancel":
        return {"reason": args.reason}
    if args.command == "fork":
        update = json_input(args.set, "--set") if args.set else None
        if update is not None and not isinstance(update, dict):
            raise UsageProblem("--set must be a JSON object of memory fields")
        return {"at": args.at, "new_run_id": args.new_run_id, "memory_update": update}
    if args.command == "approve":
        if args.deny is not None and args.args is not None:
            raise UsageProblem("give --deny or --args, not both")
        edited = json_input(args.args, "--args") if args.args is not None else None
        if edited is not None and not isinstance(edited, dict):
            raise UsageProblem("--args must be a JSON object of the tool's arguments")
        return {"call": args.call_id, "args": edited, "message": args.deny}
    return {}


async def _act(args: argparse.Namespace) -> int:
    """One engine operation (`agents._operations`), as Python and the web UI do it: with
    --dry-run its check only. A run it leaves running is driven on here when no worker
    serves its agent (as `agentfsm run` drives), with each commit printed."""
    from statemachine import InvalidMemory

    from .._operations import check_action, do_action

    action = args.command
    engine = _engine_args(args)
    if action == "approve" and args.deny is not None:
        action = "deny"
    async with opened(args) as store:
        agent = None if action in ("approve", "deny") else await stored_agent(store, args)
        wait = agent.lease_ttl + 1 if agent is not None else None
        try:
            if args.dry_run:  # a run it leaves running is driven here (below) if no worker is
                plan = await check_action(
                    store, args.run_id, action, machine=agent, drive=True, **engine
                )
                out.print(f"would: {shown(plan.commits)}; then: {shown(plan.then)}")
                out.print(f"nothing committed (the same without --dry-run: {shown(plan.command)})")
                return EXIT_DONE
            done = await do_action(
                store, args.run_id, action, machine=agent, lease_wait=wait, **engine
            )
        except InvalidMemory as exc:
            raise UsageProblem(str(exc)) from None
        if action == "fork":
            out.print(
                f"forked {shown(args.run_id)} at seq {args.at} as [bold]{shown(done.run_id)}[/]:"
                f" {done.status}; {shown(done.then)}"
            )
            return EXIT_DONE
        if action in ("approve", "deny"):
            assert done.event is not None
            verdict = "denied" if action == "deny" else "approved"
            out.print(
                f"{verdict} call {shown(args.call_id)} of run {shown(args.run_id)}"
                f" (seq {done.event.seq}); {shown(done.then)}"
            )
            return EXIT_DONE
        if done.event is not None:
            out.print(event_line(done.event))
        if agent is not None and done.status == "running" and done.plan.handed == "left":
            run = await agent.resume(store, args.run_id, lease_wait=wait)
            async with run:  # the lease goes back whatever happens
                return await drive(run, args)
        out.print(f"{done.status}: [bold]{shown(args.run_id)}[/]; {shown(done.then)}")
        return {"done": EXIT_DONE, "waiting": EXIT_WAITING}.get(done.status, EXIT_DONE)


@commands.command(
    "send",
    "deliver an event to a waiting run, then drive the run on",
    arg("run_id", metavar="RUN_ID"),
    arg("event", metavar="EVENT"),
    arg("--data", default="null", metavar="JSON", help="the event's payload"),
    AGENT,
    DRY_RUN,
)
async def send(args: argparse.Namespace) -> int:
    return await _act(args)


@commands.command(
    "retry",
    "put a failed run (or one a budget parked) back where it stopped and drive it on",
    arg("run_id", metavar="RUN_ID"),
    AGENT,
    DRY_RUN,
)
async def retry(args: argparse.Namespace) -> int:
    return await _act(args)


@commands.command(
    "cancel",
    "stop a run for good (recorded with a reason)",
    arg("run_id", metavar="RUN_ID"),
    arg("--reason", default="", help="why, for the record"),
    AGENT,
    DRY_RUN,
)
async def cancel(args: argparse.Namespace) -> int:
    return await _act(args)


@commands.command(
    "fork",
    "start a new run from a past point of a run (the original stays)",
    arg("run_id", metavar="RUN_ID"),
    arg("--at", type=at_least(0), required=True, metavar="SEQ", help="right after this commit"),
    arg("--run-id", dest="new_run_id", help="the new run's id (default: random)"),
    arg("--set", metavar="JSON", help="memory fields to change, as a JSON object"),
    AGENT,
    DRY_RUN,
)
async def fork(args: argparse.Namespace) -> int:
    return await _act(args)


@commands.command(
    "approve",
    "approve (or deny) a tool call a waiting DurableAgent run deferred for approval",
    arg("run_id", metavar="RUN_ID"),
    arg("call_id", metavar="CALL_ID", help="a wrong one is refused, naming those that wait"),
    arg("--deny", metavar="MESSAGE", help="deny the call; the model is told MESSAGE"),
    arg("--args", metavar="JSON", help="approve it with these arguments instead of the model's"),
    DRY_RUN,
)
async def approve(args: argparse.Namespace) -> int:
    return await _act(args)
