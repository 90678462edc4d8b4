"""What a person can do to a run from its page: the engine's operations
(`agents._operations`: `check_action` for the plan, `do_action` for the deed), exactly as
Python and the CLI call them, so the page, `agentfsm` and Python answer alike:

    send     `agentfsm send RUN EVENT --data JSON`
    approve  `agentfsm approve RUN CALL [--deny MESSAGE | --args JSON]`
    retry    `agentfsm retry RUN`
    cancel   `agentfsm cancel RUN --reason TEXT`
    fork     `agentfsm fork RUN --at SEQ --set JSON`

Each action has three steps: the form (GET), the plan (a POST: the engine's dry run, writing
nothing), and the deed (a POST carrying the seq the plan was made at: the engine commits only
from there, and a form posted twice commits once). A run an action leaves running is handed
on by the engine: to the workers when they serve its agent; else this server drives it
(`--drive here`) or leaves it for `agentfsm resume`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from statemachine import InvalidMemory, Machine, RunError
from statemachine.engine import Transition
from statemachine.errors import InvalidPayload
from storage import Event, RunRecord, Store

from ._forms import FormProblem, payload_fields, payload_from_form, payload_inputs
from ._html import esc, pretty

__all__ = ["ACTIONS", "ActionProblem", "Context", "Driver", "Offer", "offers", "perform", "plan"]

log = logging.getLogger(__name__)

ACTIONS = ("send", "approve", "retry", "cancel", "fork")
LEASE_WAIT = 2.0
"""Seconds an action waits for a run another process holds before saying it is busy."""
DriveMode = Literal["here", "queue"]


class ActionProblem(ValueError):
    """Why the action cannot be done as asked; nothing was written."""


@dataclass(frozen=True, slots=True)
class Context:
    store: Store
    record: RunRecord
    machine: Machine[Any] | None
    events: Sequence[Event]


@dataclass(frozen=True, slots=True)
class Offer:
    """An action the run page offers: its link and label."""

    action: str
    label: str
    params: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Plan:
    title: str
    effects: list[str]
    cli: str


@dataclass
class Driver:
    """Goes on with a run after `send` or `retry`, as the CLI does after them."""

    mode: DriveMode = "here"
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)

    def describe(self) -> str:
        """What `go_on` does in queue mode with a run no worker serves yet."""
        return "queued for the workers (`agentfsm worker`): none serves its agent now"

    async def go_on(self, machine: Machine[Any], store: Store, run_id: str) -> None:
        """Drive on a run the engine left running (no worker serves its agent)."""
        if self.mode == "queue":
            await machine.enqueue(store, run_id)
            return
        run = await machine.resume(store, run_id, lease_wait=LEASE_WAIT)
        task = asyncio.create_task(_drive(run))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)


async def _drive(run: Any) -> None:
    try:
        await run.until_done()
    except Exception:  # shown on the run page as the run's state; logged here
        log.exception("driving run %r", run.run_id)


async def offers(ctx: Context) -> list[Offer]:
    """The actions the engine would accept on this run now (its dry run, per action)."""
    from .._operations import check_action

    r, m = ctx.record, ctx.machine
    found: list[Offer] = []
    if m is not None and r.status == "waiting":
        found += [Offer("send", f"send {t.trigger}", {"event": t.trigger}) for t in _waits(m, r)]
    found += [
        Offer("approve", f"approve / deny {call_id} ({tool})", {"call": call_id})
        for call_id, tool, _ in _pending_approvals(ctx)
    ]
    for action in ("retry", "cancel", "fork"):
        args: dict[str, Any] = {"at": r.seq} if action == "fork" else {}
        try:
            await check_action(ctx.store, r.run_id, action, machine=m, **args)
        except (RunError, ValueError):
            continue
        found.append(Offer(action, action))
    return found


def _waits(machine: Machine[Any], record: RunRecord) -> list[Transition]:
    return [t for t in machine.table.out.get(record.state, ()) if t.waits]


def _pending_approvals(ctx: Context) -> list[tuple[str, str, dict[str, Any]]]:
    """(call id, tool name, args) of the calls a DurableAgent run waits to have approved."""
    from ..durable._approvals import waiting_calls

    try:
        calls = waiting_calls(ctx.record, ctx.events)
    except RunError:  # none to answer
        return []
    return [(c.tool_call_id, c.tool_name, c.args_as_dict()) for c in calls]


def _need_machine(ctx: Context) -> Machine[Any]:
    if ctx.machine is None:
        raise ActionProblem(
            f"the agent {ctx.record.agent!r} is not known to this server: start it with"
            " --agents MODULE:AGENT (or register the agent)"
        )
    return ctx.machine


# ------------------------------------------------------------------------------ forms


def form_fields(action: str, ctx: Context, values: Mapping[str, str]) -> str:
    """The inputs of `action`'s form (without the form element and its CSRF field)."""
    form = _FORMS.get(action)
    if form is None:
        raise ActionProblem(f"unknown action {action!r}")
    return form(ctx, values)


def _send_form(ctx: Context, values: Mapping[str, str]) -> str:
    t = _send_transition(ctx, values)
    return (
        f'<input type="hidden" name="event" value="{esc(t.trigger)}">'
        f"<p>Event <b>{esc(t.trigger)}</b> from state <b>{esc(ctx.record.state)}</b>.</p>"
        + payload_inputs(payload_fields(getattr(t.step, "payload", None)), values)
    )


def _approve_form(ctx: Context, values: Mapping[str, str]) -> str:
    call_id, tool, args = _approval_call(ctx, values)
    verdict = values.get("verdict", "approve")
    return (
        f'<input type="hidden" name="call" value="{esc(call_id)}">'
        f"<p>Tool <b>{esc(tool)}</b>, call <code>{esc(call_id)}</code>, with arguments:</p>"
        f'<pre class="code">{pretty(args)}</pre>'
        + "".join(
            f'<label class="choice"><input type="radio" name="verdict" value="{v}"'
            f"{' checked' if v == verdict else ''}> {v}</label>"
            for v in ("approve", "deny")
        )
        + "<label>arguments instead of the model's (JSON object, optional) <textarea"
        f' name="args" rows="3">{esc(values.get("args", ""))}</textarea></label>'
        '<label>message to the model when denied <input name="message"'
        f' value="{esc(values.get("message", ""))}"></label>'
    )


def _retry_form(ctx: Context, values: Mapping[str, str]) -> str:
    return f"<p>Retry run <b>{esc(ctx.record.run_id)}</b> from where it stopped.</p>"


def _cancel_form(ctx: Context, values: Mapping[str, str]) -> str:
    return (
        f'<label>reason (for the record) <input name="reason"'
        f' value="{esc(values.get("reason", ""))}"></label>'
    )


def _fork_form(ctx: Context, values: Mapping[str, str]) -> str:
    seq = ctx.record.seq
    at = values.get("at", str(seq))
    form = values.get("form", "") or secrets.token_hex(4)  # names the fork: made once
    return (
        f'<input type="hidden" name="form" value="{esc(form)}">'
        f'<label>at seq (0..{seq}) <input type="number" name="at" min="0" max="{seq}"'
        f' value="{esc(at)}"></label>'
        '<label>new run id (optional) <input name="new_run_id"'
        f' value="{esc(values.get("new_run_id", ""))}"></label>'
        '<label>memory fields to change (JSON object) <textarea name="set" rows="4">'
        f"{esc(values.get('set', '{}'))}</textarea></label>"
    )


_FORMS: dict[str, Callable[[Context, Mapping[str, str]], str]] = {
    "send": _send_form, "approve": _approve_form, "retry": _retry_form,
    "cancel": _cancel_form, "fork": _fork_form,
}  # fmt: skip


def _send_transition(ctx: Context, values: Mapping[str, str]) -> Transition:
    """The wait transition the form's event fires (the engine's rule: `wait_transition`)."""
    machine = _need_machine(ctx)
    memory = machine.memory_type.model_validate(ctx.record.memory)
    event = values.get("event", "")
    try:
        return machine.wait_transition(ctx.record, memory, event)
    except RunError as exc:
        raise ActionProblem(str(exc)) from None


def _approval_call(ctx: Context, values: Mapping[str, str]) -> tuple[str, str, dict[str, Any]]:
    """The call the form answers, or the engine's refusal (`waiting_call`)."""
    from ..durable._approvals import waiting_call

    try:
        call = waiting_call(ctx.record, ctx.events, values.get("call", ""))
    except RunError as exc:
        raise ActionProblem(str(exc)) from None
    return call.tool_call_id, call.tool_name, call.args_as_dict()


# ------------------------------------------------------------------------------ plans


def _engine_args(action: str, ctx: Context, values: Mapping[str, str]) -> dict[str, Any]:
    """The engine's arguments for `action`, read from the form (checked by the engine)."""
    read = _ARGS.get(action)
    return read(ctx, values) if read is not None else {}


def _send_args(ctx: Context, values: Mapping[str, str]) -> dict[str, Any]:
    """The event and the payload the form gives, read by the event's payload type; whether
    the run takes them is the engine's check (a form posted again after it was done is
    answered by the engine as done, not refused here)."""
    machine, event = _need_machine(ctx), values.get("event", "")
    waits = [t for t in machine.transitions if t.waits and t.trigger == event]
    t = next((t for t in waits if ctx.record.state in t.source), waits[0] if waits else None)
    return {"event": event, "payload": _send_payload(t, values) if t is not None else None}


def _approve_args(ctx: Context, values: Mapping[str, str]) -> dict[str, Any]:
    deny, args = _verdict(values)
    return {"call": values.get("call", ""), "args": args, "message": deny,
            "verdict": "deny" if deny is not None else "approve"}  # fmt: skip


def _fork_args(ctx: Context, values: Mapping[str, str]) -> dict[str, Any]:
    at, new_id, update = _fork_values(ctx, values)
    return {"at": at, "new_run_id": new_id, "memory_update": update or None}


_ARGS: dict[str, Callable[[Context, Mapping[str, str]], dict[str, Any]]] = {
    "send": _send_args, "approve": _approve_args, "fork": _fork_args,
    "cancel": lambda ctx, values: {"reason": values.get("reason", "")},
}  # fmt: skip


def _engine_action(action: str, args: Mapping[str, Any]) -> str:
    return str(args.get("verdict", action)) if action == "approve" else action


async def plan(action: str, ctx: Context, values: Mapping[str, str], driver: Driver) -> Plan:
    """What `action` with these form values will do: the engine's dry run. `ActionProblem`
    (naming what is wrong) when it cannot be done. Writes nothing."""
    from .._operations import check_action

    try:
        args = _engine_args(action, ctx, values)
        checked = await check_action(
            ctx.store, ctx.record.run_id, _engine_action(action, args), machine=ctx.machine,
            drive=driver.mode == "here", **args,
        )  # fmt: skip
    except (InvalidPayload, InvalidMemory, FormProblem, RunError, ValueError) as exc:
        raise ActionProblem(str(exc)) from None
    queued = driver.mode == "queue" and checked.handed == "left"  # `perform` queues it
    effects = [checked.commits, f"then: {driver.describe() if queued else checked.then}"]
    title = f"{action}: run {ctx.record.run_id!r}"
    return Plan(title, effects, checked.command)


def _send_payload(t: Transition, values: Mapping[str, str]) -> Any:
    return payload_from_form(payload_fields(getattr(t.step, "payload", None)), values)


def _verdict(values: Mapping[str, str]) -> tuple[str | None, dict[str, Any] | None]:
    if values.get("verdict") == "deny":
        return values.get("message", ""), None
    text = values.get("args", "").strip()
    if not text:
        return None, None
    try:
        args = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ActionProblem(f"the arguments are not JSON: {exc}") from None
    if not isinstance(args, dict):
        raise ActionProblem("the arguments must be a JSON object of the tool's arguments")
    return None, args


def _fork_values(ctx: Context, values: Mapping[str, str]) -> tuple[int, str, dict[str, Any]]:
    """The fork's seq, new run id and memory changes, as the form gives them. Without a new
    id, the form's own one (made when the form was shown), so a form posted twice forks once."""
    try:
        at = int(values.get("at", ""))
    except ValueError:
        raise ActionProblem(f"seq {values.get('at')!r} is not a number") from None
    text = values.get("set", "").strip() or "{}"
    try:
        update = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ActionProblem(f"the memory changes are not JSON: {exc}") from None
    if not isinstance(update, dict):
        raise ActionProblem("the memory changes must be a JSON object of memory fields")
    new_id = values.get("new_run_id", "").strip()
    if not new_id:
        form = values.get("form", "")
        if not form.isalnum():
            raise ActionProblem("the form has no id: reload the run page and try again")
        new_id = f"{ctx.record.run_id}-fork-{form}"
    return at, new_id, update


# ------------------------------------------------------------------------------ deeds


async def perform(action: str, ctx: Context, values: Mapping[str, str], driver: Driver) -> str:
    """Do `action` through the engine (which checks it again, and commits only from the seq
    the plan was made at); the URL of the page to show next. `ActionProblem` when it cannot
    be done (then nothing was written)."""
    from .._operations import do_action

    try:
        expect = int(values.get("seq", ""))
    except ValueError:
        raise ActionProblem("the form has no seq: reload the run page and try again") from None
    try:
        args = _engine_args(action, ctx, values)
        done = await do_action(
            ctx.store, ctx.record.run_id, _engine_action(action, args), machine=ctx.machine,
            expect_seq=expect, lease_wait=LEASE_WAIT, **args,
        )  # fmt: skip
    except (InvalidPayload, InvalidMemory, FormProblem, RunError, ValueError) as exc:
        raise ActionProblem(str(exc)) from None
    drives = action in ("send", "retry") and done.then.startswith("left")  # not a fork
    if drives and done.status == "running" and ctx.machine is not None:
        await driver.go_on(ctx.machine, ctx.store, done.run_id)
    return f"/runs/{done.run_id}"
