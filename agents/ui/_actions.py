"""What a person can do to a run from its page, each through the same calls the CLI makes
(`agents/cli/running.py`), so each is recorded as the CLI records it:

    send     Run.send(event, payload)          as `agentfsm send RUN EVENT --data JSON`
    approve  approve_tool_call(...)            as `agentfsm approve RUN CALL [--deny|--args]`
    retry    Run.retry()                       as `agentfsm retry RUN`
    cancel   Run.cancel(reason)                as `agentfsm cancel RUN --reason TEXT`
    fork     Machine.fork(run, at, ...)        as `agentfsm fork RUN --at SEQ --set JSON`

Each action has three steps: the form (GET), the plan (a POST that checks everything and
says what will happen, writing nothing), and the deed (a POST that checks again, refuses if
the run moved since the plan was shown, then acts). Like the CLI, `send` and `retry` go on
driving the run (in this server, or by queueing it for the workers: `--drive`).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from statemachine import InvalidMemory, InvalidPayload, Machine, RunError, Transition
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
        if self.mode == "queue":
            return "then queues the run for the workers (`agentfsm worker`), which drive it on"
        return (
            "then drives the run on in this server until it waits, fails or ends (as the CLI"
            " command does in its process)"
        )

    async def go_on(self, machine: Machine[Any], run: Any) -> None:
        if self.mode == "queue" or run.status != "running":
            await run.release(quiet=True)
            if run.status == "running":
                await machine.enqueue(run.store, run.run_id)
            return
        task = asyncio.create_task(_drive(run))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)


async def _drive(run: Any) -> None:
    try:
        await run.until_done()
    except Exception:  # shown on the run page as the run's state; logged here
        log.exception("driving run %r", run.run_id)


def offers(ctx: Context) -> list[Offer]:
    r, m = ctx.record, ctx.machine
    found: list[Offer] = []
    if m is not None and r.status == "waiting":
        found += [Offer("send", f"send {t.trigger}", {"event": t.trigger}) for t in _waits(m, r)]
    found += [
        Offer("approve", f"approve / deny {call_id} ({tool})", {"call": call_id})
        for call_id, tool, _ in _pending_approvals(ctx)
    ]
    if m is not None and r.status == "failed":
        found.append(Offer("retry", "retry"))
    if m is not None and r.status not in ("done", "cancelled"):
        found.append(Offer("cancel", "cancel"))
    if m is not None:
        found.append(Offer("fork", "fork"))
    return found


def _waits(machine: Machine[Any], record: RunRecord) -> list[Transition]:
    return [t for t in machine.table.out.get(record.state, ()) if t.waits]


def _pending_approvals(ctx: Context) -> list[tuple[str, str, dict[str, Any]]]:
    """(call id, tool name, args) of the calls a DurableAgent run waits to have approved."""
    from .._durable_steps import APPROVAL, DURABLE_KIND, rounds_of

    if ctx.record.memory.get("kind") != DURABLE_KIND or ctx.record.state != APPROVAL:
        return []
    rounds = rounds_of(ctx.events)
    if not rounds:
        return []
    current = rounds[-1]
    return [
        (c.tool_call_id, c.tool_name, c.args_as_dict())
        for c in current.requests.approvals
        if c.tool_call_id in current.pending
    ]


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
    r = ctx.record
    if action == "send":
        t = _send_transition(ctx, values)
        return (
            f'<input type="hidden" name="event" value="{esc(t.trigger)}">'
            f"<p>Event <b>{esc(t.trigger)}</b> from state <b>{esc(r.state)}</b>.</p>"
            + payload_inputs(payload_fields(getattr(t.step, "payload", None)), values)
        )
    if action == "approve":
        call_id, tool, args = _approval_call(ctx, values)
        verdict = values.get("verdict", "approve")
        return (
            f'<input type="hidden" name="call" value="{esc(call_id)}">'
            f"<p>Tool <b>{esc(tool)}</b>, call <code>{esc(call_id)}</code>, with arguments:</p>"
            f'<pre class="code">{pretty(args)}</pre>'
            + "".join(
                f'<label><input type="radio" name="verdict" value="{v}"'
                f"{' checked' if v == verdict else ''}> {v}</label>"
                for v in ("approve", "deny")
            )
            + "<label>arguments instead of the model's (JSON object, optional) <textarea"
            f' name="args" rows="3">{esc(values.get("args", ""))}</textarea></label>'
            '<label>message to the model when denied <input name="message"'
            f' value="{esc(values.get("message", ""))}"></label>'
        )
    if action == "retry":
        return f"<p>Retry run <b>{esc(r.run_id)}</b> from where it failed.</p>"
    if action == "cancel":
        return (
            f'<label>reason (for the record) <input name="reason"'
            f' value="{esc(values.get("reason", ""))}"></label>'
        )
    if action == "fork":
        at = values.get("at", str(r.seq))
        return (
            f'<label>at seq (0..{r.seq}) <input type="number" name="at" min="0" max="{r.seq}"'
            f' value="{esc(at)}"></label>'
            '<label>new run id (optional) <input name="new_run_id"'
            f' value="{esc(values.get("new_run_id", ""))}"></label>'
            '<label>memory fields to change (JSON object) <textarea name="set" rows="4">'
            f"{esc(values.get('set', '{}'))}</textarea></label>"
        )
    raise ActionProblem(f"unknown action {action!r}")


def _send_transition(ctx: Context, values: Mapping[str, str]) -> Transition:
    machine = _need_machine(ctx)
    waits = _waits(machine, ctx.record)
    event = values.get("event", "")
    t = next((t for t in waits if t.trigger == event), None)
    if ctx.record.status != "waiting" or t is None:
        expected = [t.trigger for t in waits]
        raise ActionProblem(
            f"run {ctx.record.run_id!r} does not wait for event {event!r}: it is"
            f" {ctx.record.status} in state {ctx.record.state!r}"
            + (f" and waits for {expected}" if expected and ctx.record.status == "waiting" else "")
        )
    return t


def _approval_call(ctx: Context, values: Mapping[str, str]) -> tuple[str, str, dict[str, Any]]:
    pending = _pending_approvals(ctx)
    call_id = values.get("call", "")
    found = next((p for p in pending if p[0] == call_id), None)
    if found is None:
        names = ", ".join(f"{c} ({t})" for c, t, _ in pending) or "none"
        raise ActionProblem(f"no call {call_id!r} waits for approval; waiting: {names}")
    return found


# ------------------------------------------------------------------------------ plans


def plan(action: str, ctx: Context, values: Mapping[str, str], driver: Driver) -> Plan:
    """What `action` with these form values will do; `ActionProblem` (naming what is wrong)
    when it cannot be done. Writes nothing."""
    r = ctx.record
    try:
        if action == "send":
            t = _send_transition(ctx, values)
            payload = _send_payload(t, values)
            into = getattr(t.step, "into", None)
            dest = t.dest or "the state its route picks"
            return Plan(
                f"Send event {t.trigger!r} to run {r.run_id!r}",
                [
                    f"commits event {t.trigger!r} as seq {r.seq + 1}: state {r.state!r} → {dest!r}",
                    f"payload: {json.dumps(payload, ensure_ascii=False)}"
                    + (f" (into memory field {into!r})" if into else ""),
                    driver.describe(),
                ],
                f"agentfsm send {r.run_id} {t.trigger} --data '{json.dumps(payload)}'",
            )
        if action == "approve":
            call_id, tool, _ = _approval_call(ctx, values)
            deny, args = _verdict(values)
            what = (
                f"denies call {call_id} of tool {tool!r}; the model is told {deny!r}"
                if deny is not None
                else f"approves call {call_id} of tool {tool!r}"
                + (f" with arguments {json.dumps(args)}" if args is not None else "")
            )
            flag = f" --deny {json.dumps(deny)}" if deny is not None else ""
            flag += f" --args '{json.dumps(args)}'" if args is not None else ""
            return Plan(
                f"Answer call {call_id} of run {r.run_id!r}",
                [f"commits an answer as seq {r.seq + 1}: {what}",
                 "the run goes on when it is run again (DurableAgent.run(run_id=...))"],
                f"agentfsm approve {r.run_id} {call_id}{flag}",
            )  # fmt: skip
        if action == "retry":
            _need_machine(ctx)
            if r.status != "failed":
                raise ActionProblem(f"run {r.run_id!r} is {r.status}, not failed: nothing to retry")
            return Plan(
                f"Retry run {r.run_id!r}",
                [f"commits a 'retry' event as seq {r.seq + 1}, putting the run back where it"
                 " failed (status running)", driver.describe()],
                f"agentfsm retry {r.run_id}",
            )  # fmt: skip
        if action == "cancel":
            _need_machine(ctx)
            if r.status in ("done", "cancelled"):
                raise ActionProblem(f"run {r.run_id!r} is already {r.status}")
            reason = values.get("reason", "")
            return Plan(
                f"Cancel run {r.run_id!r}",
                [f"commits a 'cancel' event as seq {r.seq + 1}: the run stops for good"
                 f" (status cancelled) in state {r.state!r}", f"reason: {reason or '(none)'}"],
                f"agentfsm cancel {r.run_id}"
                + (f" --reason {json.dumps(reason)}" if reason else ""),
            )  # fmt: skip
        if action == "fork":
            at, new_id, update = _fork_values(ctx, values)
            return Plan(
                f"Fork run {r.run_id!r} at seq {at}",
                [f"creates a new run {new_id or '(random id)'} where {r.run_id!r} was right"
                 f" after seq {at}, the original untouched",
                 f"memory changes: {json.dumps(update, ensure_ascii=False)}" if update
                 else "memory as it was at that seq",
                 "nothing runs until it is resumed (agentfsm resume NEW_RUN)"],
                f"agentfsm fork {r.run_id} --at {at}"
                + (f" --run-id {new_id}" if new_id else "")
                + (f" --set '{json.dumps(update)}'" if update else ""),
            )  # fmt: skip
    except (InvalidPayload, InvalidMemory, FormProblem, RunError) as exc:
        raise ActionProblem(str(exc)) from None
    raise ActionProblem(f"unknown action {action!r}")


def _send_payload(t: Transition, values: Mapping[str, str]) -> Any:
    payload = payload_from_form(payload_fields(getattr(t.step, "payload", None)), values)
    check = getattr(t.step, "check_payload", None)
    return check(payload) if check is not None else payload


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
    from statemachine._provenance import memory_at

    machine = _need_machine(ctx)
    r = ctx.record
    try:
        at = int(values.get("at", ""))
    except ValueError:
        raise ActionProblem(f"seq {values.get('at')!r} is not a number") from None
    if not 0 <= at <= r.seq:
        raise ActionProblem(f"seq {at} is out of range: the run has seqs 0..{r.seq}")
    text = values.get("set", "").strip() or "{}"
    try:
        update = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ActionProblem(f"the memory changes are not JSON: {exc}") from None
    if not isinstance(update, dict):
        raise ActionProblem("the memory changes must be a JSON object of memory fields")
    unknown = set(update) - set(machine.memory_type.model_fields)
    if unknown:
        raise ActionProblem(
            f"unknown memory fields {sorted(unknown)}; the fields are"
            f" {sorted(machine.memory_type.model_fields)}"
        )
    _, fields = memory_at(ctx.events, at)
    machine.validate_memory({**fields, **update}, f"forking {r.run_id!r}")
    new_id = values.get("new_run_id", "").strip()
    if new_id:
        from storage.base import check_run_id

        check_run_id(new_id)
    return at, new_id, update


# ------------------------------------------------------------------------------ deeds


async def perform(action: str, ctx: Context, values: Mapping[str, str], driver: Driver) -> str:
    """Do `action` (after `plan` checks it again); the URL of the page to show next.
    `ActionProblem` when it cannot be done (then nothing was written)."""
    plan(action, ctx, values, driver)
    expected = values.get("seq", "")
    r = ctx.record
    if expected != str(r.seq):
        raise ActionProblem(
            f"run {r.run_id!r} moved on since this was shown (seq {expected} → {r.seq}):"
            " look at it again before acting"
        )
    try:
        return await _perform(action, ctx, values, driver)
    except (InvalidPayload, InvalidMemory, RunError, ValueError) as exc:
        raise ActionProblem(str(exc)) from None


async def _perform(action: str, ctx: Context, values: Mapping[str, str], driver: Driver) -> str:
    r = ctx.record
    page = f"/runs/{r.run_id}"
    if action == "approve":
        from .._durable import approve_tool_call

        deny, args = _verdict(values)
        await approve_tool_call(ctx.store, r.run_id, values["call"], args=args, deny=deny)
        return page
    machine = _need_machine(ctx)
    if action == "fork":
        at, new_id, update = _fork_values(ctx, values)
        forked = await machine.fork(
            ctx.store, r.run_id, at, new_run_id=new_id or None, memory_update=update or None
        )
        return f"/runs/{forked.run_id}"
    run = await machine.resume(ctx.store, r.run_id, lease_wait=LEASE_WAIT)
    try:
        if action == "send":
            t = _send_transition(ctx, values)
            await run.send(t.trigger, _send_payload(t, values))
        elif action == "retry":
            await run.retry()
        elif action == "cancel":
            await run.cancel(values.get("reason", ""))
            await run.release(quiet=True)
            return page
    except BaseException:
        await run.release(quiet=True)
        raise
    await driver.go_on(machine, run)
    return page
