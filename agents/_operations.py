"""The actions people take on runs, for Python, the CLI and the web UI alike: the engine's
operations (`statemachine._operations`: resume, send, retry, cancel, fork) plus approve and
deny of a `DurableAgent` run's deferred tool call, which is a `send` of the answer.

`check_action` is the dry run (what it will commit, or `Refused` naming why not), and
`do_action` the deed; both take the agent (`machine`) when the action needs its table, and
find a DurableAgent run's machine from the store.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from statemachine import Machine, RunError, RunNotFound
from statemachine.engine import ACTIONS, Action, Done, Plan, Refused, check, operate
from storage import Event, Store

from .durable._approvals import approval
from .durable._steps import ANSWER, DURABLE_KIND, durable_machine

__all__ = ["AGENT_ACTIONS", "approve_tool_call", "check_action", "do_action"]

AGENT_ACTIONS: tuple[str, ...] = (*ACTIONS, "approve", "deny")


async def _target(
    store: Store,
    run_id: str,
    action: str,
    machine: Machine[Any] | None,
    args: dict[str, Any],
) -> tuple[Machine[Any], Action, str | None]:
    """The machine the action runs on, the engine's `Action`, and its own CLI command (for
    approve/deny, which the engine does as a `send`)."""
    if action not in AGENT_ACTIONS:
        raise Refused(f"unknown action {action!r}: one of {', '.join(AGENT_ACTIONS)}")
    if action in ("approve", "deny"):
        deny = args.get("message", "") if action == "deny" else None
        machine, payload = await approval(
            store, run_id, str(args.get("call", "")), args=args.get("args"), deny=deny
        )
        flag = f" --deny {deny!r}" if deny is not None else ""
        if args.get("args") is not None:
            flag += " --args '...'"
        command = f"agentfsm approve {run_id} {args.get('call')}{flag}"
        return machine, Action(name="send", event=ANSWER, payload=payload), command
    if machine is None:
        record = await store.load(run_id)
        if record is None:
            raise RunNotFound(run_id)
        raise Refused(
            f"the agent {record.agent!r} of run {run_id!r} is not known here: pass --agent"
            " MODULE:AGENT (or register the agent)"
        )
    engine = {k: v for k, v in args.items() if k in _ENGINE_ARGS}
    return machine, Action(name=action, **engine), None


_ENGINE_ARGS = frozenset(f for f in Action.__dataclass_fields__ if f != "name")


async def check_action(
    store: Store, run_id: str, action: str, *, machine: Machine[Any] | None = None,
    drive: bool = False, **args: Any,
) -> Plan:  # fmt: skip
    """What `action` will commit on run `run_id` (writing nothing) and who drives the run on
    after it (`Plan.then`, as `do_action` with the same `drive` will say), or `Refused` (a
    `RunError`) / the argument's own error naming why not."""
    target, engine, command = await _target(store, run_id, action, machine, args)
    plan = await check(target, store, run_id, engine, drive=drive and command is None)
    if command:
        plan = replace(plan, action=action, command=command, then=_durable_then(plan))
    return plan


def _durable_then(plan: Plan) -> str:
    """Who drives a DurableAgent run on once a call is answered: workers that serve its
    agent (the engine queued it), else the application."""
    if plan.handed == "queue":
        return plan.then
    return f"the run goes on when it is run again: DurableAgent.run(run_id={plan.run_id!r})"


async def do_action(
    store: Store,
    run_id: str,
    action: str,
    *,
    machine: Machine[Any] | None = None,
    expect_seq: int | None = None,
    drive: bool = False,
    lease_wait: float | None = None,
    **args: Any,
) -> Done:
    """Do `action` (checked again first): see `statemachine._operations.operate`."""
    try:
        target, engine, command = await _target(store, run_id, action, machine, args)
    except RunError:
        again = await _answered_before(store, run_id, action, expect_seq, args.get("call"))
        if again is None:
            raise
        return again
    done = await operate(
        target, store, run_id, engine, expect_seq=expect_seq,
        drive=drive and command is None, lease_wait=lease_wait,
    )  # fmt: skip
    if command:
        then = _durable_then(done.plan)
        plan = replace(done.plan, action=action, command=command, then=then)
        done = replace(done, plan=plan, then=then if not done.again else done.then)
    return done


async def _answered_before(
    store: Store, run_id: str, action: str, expect_seq: int | None, call: object
) -> Done | None:
    """approve/deny of call `call` asked again from `expect_seq` once it was done (a form
    posted twice): what was done then, as the engine's `operate` answers any action asked
    again; `Refused` when the run moved otherwise; None when it was not asked from a seq."""
    if action not in ("approve", "deny") or expect_seq is None:
        return None
    record = await store.load(run_id)
    if record is None or record.seq == expect_seq or record.memory.get("kind") != DURABLE_KIND:
        return None
    machine = durable_machine(record.agent, record.version)
    answer = Action(name="send", event=ANSWER)
    done = await operate(machine, store, run_id, answer, expect_seq=expect_seq)  # or Refused
    output = done.event.output if done.event is not None else None
    answered = output.get("tool_call_id") if isinstance(output, dict) else None
    if answered != call:  # another call's answer
        raise Refused(
            f"run {run_id!r} moved on since this was checked (seq {expect_seq} → {record.seq},"
            f" call {answered!r} was answered): look at it again before acting"
        )
    return done


async def approve_tool_call(
    store: Store,
    run_id: str,
    tool_call_id: str,
    *,
    args: Mapping[str, Any] | None = None,
    deny: str | None = None,
) -> Event:
    """Answer one call that a waiting DurableAgent run deferred for approval, from any process.

    Approves the call with the arguments the model gave, or with `args` (they replace the
    model's); with `deny`, denies it and the model is told `deny`. The answer is committed
    with the sha256 of the exact arguments approved; once every deferred call is answered
    the run can go on (`DurableAgent.run(run_id=...)`). Needs only the store: the agent
    itself is not loaded. Returns the committed event. The engine operation "approve" /
    "deny" (`agents._operations`), as the CLI and the UI do it.

    Raises `RunNotFound`; `RunError` when the run is not a DurableAgent run, is not waiting,
    or has no call `tool_call_id` waiting for approval (the message lists those that are).
    """
    action = "deny" if deny is not None else "approve"
    done = await do_action(
        store, run_id, action, call=tool_call_id, args=dict(args) if args is not None else None,
        message=deny,
    )  # fmt: skip
    assert done.event is not None
    return done.event
