"""The run page: the graph with the run drawn on it, the timeline, memory at any seq with
the diff of each step, where each field's value came from (`why`), the conversation and the
errors. The graph, header and conversation are the run report's (`agents._report`)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from pydantic import JsonValue

from statemachine import Machine
from statemachine.engine import Write, memory_at, why
from storage import Event, RunRecord

from .._report import _graph, _header, _messages, _model, _took
from ._actions import Offer
from ._html import esc, pretty, query, when

__all__ = ["run_body"]

_GRAPHS: OrderedDict[tuple[str, str, int, int], str] = OrderedDict()
"""Drawn graphs by (agent, run, version, seq): `dot` runs once per commit of a run shown."""
_GRAPHS_KEPT = 256


def run_body(
    machine: Machine[Any] | None,
    record: RunRecord,
    events: Sequence[Event],
    offers: Sequence[Offer],
    at: int | None,
    notice: str = "",
    spending: str = "",
    waiting: str = "",
) -> str:
    seq = record.seq if at is None or not 0 <= at <= record.seq else at
    parts = [
        f'<p class="notice">{esc(notice)}</p>' if notice else "",
        _header(record, events),
        f'<p class="livestate" id="runstate">{esc(record.state)} · {esc(record.status)} · seq'
        f" {record.seq}</p>",
        f'<p class="muted" id="spending">{esc(spending)}</p>' if spending else "",
        waiting,
        _actions(record, offers),
        _drawn(machine, record, events),
        _timeline(machine, record, events, seq),
        _memory(machine, events, seq),
        _errors(events),
        _conversation(events),
    ]
    return "".join(parts)


def _drawn(machine: Machine[Any] | None, record: RunRecord, events: Sequence[Event]) -> str:
    key = (record.agent, record.run_id, record.version, record.seq)
    if machine is None:
        return (
            '<section><h2>Graph</h2><p class="note">The agent '
            f"<code>{esc(record.agent)}</code> is not known to this server, so its graph is not"
            " drawn: start it with <code>agentfsm ui --agents MODULE:AGENT</code> (or register"
            " the agent under the <code>agentfsm.agents</code> entry point).</p></section>"
        )
    if key not in _GRAPHS:
        _GRAPHS[key] = _graph(machine, record, events, svg=True)
        while len(_GRAPHS) > _GRAPHS_KEPT:
            _GRAPHS.popitem(last=False)
    return _GRAPHS[key]


def _actions(record: RunRecord, offers: Sequence[Offer]) -> str:
    if not offers:
        return ""
    links = "".join(
        f'<a class="button" href="/runs/{esc(record.run_id)}/act/{esc(o.action)}'
        f'{query(**o.params)}">{esc(o.label)}</a>'
        for o in offers
    )
    return f'<section id="actions"><h2>Actions</h2><p class="buttons">{links}</p></section>'


def _timeline(
    machine: Machine[Any] | None, record: RunRecord, events: Sequence[Event], at: int
) -> str:
    rows = []
    for e in events:
        mark = ' class="chosen"' if e.seq == at else ""
        changed = ", ".join(e.patch) if e.kind != "start" else "(initial memory)"
        problem = (
            f'<span class="error">{esc(e.error.get("type"))}: {esc(e.error.get("message"))}</span>'
            if e.error
            else ""
        )
        rows.append(
            f'<tr{mark} id="t-{e.seq}"><td class="num"><a href="/runs/{esc(record.run_id)}'
            f'?at={e.seq}#memory">{e.seq}</a></td><td><b>{esc(e.trigger)}</b> {problem}</td>'
            f"<td>{esc(e.source or '·')} → {esc(e.dest)}</td><td>{esc(e.kind)}</td>"
            f"<td>{esc(e.status)}</td><td>{when(e.ended_at)}</td>"
            f'<td class="num">{esc(_took(e))}</td><td class="num">{e.attempt}</td>'
            f"<td>{esc(changed)}</td><td>{esc(_model(machine, e))}</td></tr>"
        )
    return (
        '<section id="timeline"><h2>Timeline</h2><table><thead><tr><th>seq</th><th>trigger</th>'
        "<th>from → to</th><th>kind</th><th>status</th><th>ended (UTC)</th><th>took</th>"
        "<th>attempt</th><th>memory changed</th><th>model</th></tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table></section>"
    )


def _memory(machine: Machine[Any] | None, events: Sequence[Event], at: int) -> str:
    """Memory right after seq `at`, what the step at `at` changed, and why each field."""
    state, memory = memory_at(events, at)
    before: dict[str, JsonValue] = memory_at(events, at - 1)[1] if at > 0 else {}
    step = next(e for e in events if e.seq == at)
    diff = "".join(
        f"<tr><td><b>{esc(name)}</b></td><td><pre>{_old(before, name)}</pre></td>"
        f"<td><pre>{pretty(value)}</pre></td></tr>"
        for name, value in step.patch.items()
    )
    diff_table = (
        '<table class="diff"><thead><tr><th>field</th><th>before</th><th>after</th></tr></thead>'
        f"<tbody>{diff}</tbody></table>"
        if diff
        else '<p class="muted">this step changed no memory field</p>'
    )
    rows = "".join(
        f'<tr id="why-{esc(name)}"><td><b>{esc(name)}</b></td><td><pre>{pretty(value)}</pre></td>'
        f"<td>{_why(events, name, at, machine)}</td></tr>"
        for name, value in memory.items()
    )
    nav = " ".join(
        f'<a href="?at={s}#memory"{" class=chosen" if s == at else ""}>{s}</a>'
        for s in _nearby(at, events[-1].seq)
    )
    details = (
        f"<h3>What seq {at} ({esc(step.trigger)}) changed</h3>{diff_table}"
        "<h3>Every field, and why it has its value</h3>"
        '<table class="fields"><thead><tr><th>field</th><th>value</th><th>why</th></tr></thead>'
        f"<tbody>{rows}</tbody></table>"
    )
    from ..durable._steps import DURABLE_KIND  # (here: it imports pydantic-ai)

    if memory.get("kind") == DURABLE_KIND:  # the engine's bookkeeping: behind a toggle
        details = (
            f'{_durable_summary(memory)}<details class="raw" id="raw"><summary>raw memory'
            " (the engine's own record: agent digest, prompt and deferred calls as JSON)"
            f"</summary>{details}</details>"
        )
    return (
        f'<section id="memory"><h2>Memory after seq {at} <span class="muted">(state'
        f' {esc(state)})</span></h2><p class="seqs">seq: {nav}</p>{details}</section>'
    )


def _durable_summary(memory: dict[str, JsonValue]) -> str:
    """A DurableAgent run's memory as a person reads it: the prompt's text, the output, and
    the tool calls it waits on."""
    texts = [
        str(part.get("content"))
        for message in _dicts(memory.get("prompt"))
        for part in _dicts(message.get("parts"))
        if part.get("part_kind") == "user-prompt"
    ]
    rows = [("prompt", f'<div class="text">{esc(chr(10).join(texts)) or "-"}</div>')]
    deferred = memory.get("deferred")
    if isinstance(deferred, dict):
        calls = [
            f"<li><b>{esc(c.get('tool_name'))}</b> <code>{esc(c.get('tool_call_id'))}</code>"
            f" ({esc(kind)}) <pre>{pretty(c.get('args'))}</pre></li>"
            for kind in ("approvals", "calls")
            for c in _dicts(deferred.get(kind))
        ]
        rows.append(("waits on", f"<ul>{''.join(calls)}</ul>"))
    if memory.get("output") is not None:
        rows.append(("output", f"<pre>{pretty(memory.get('output'))}</pre>"))
    body = "".join(f"<tr><td><b>{esc(k)}</b></td><td>{v}</td></tr>" for k, v in rows)
    return f'<table class="fields" id="summary"><tbody>{body}</tbody></table>'


def _dicts(value: JsonValue) -> list[dict[str, JsonValue]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _old(before: dict[str, JsonValue], name: str) -> str:
    return pretty(before[name]) if name in before else "<i>(none)</i>"


def _nearby(at: int, last: int) -> list[int]:
    """The seqs to link to: all of a short run; else the ends and those near `at`."""
    if last <= 40:
        return list(range(last + 1))
    return sorted({0, *range(max(at - 10, 0), min(at + 11, last + 1)), last})


def _why(events: Sequence[Event], name: str, at: int, machine: Machine[Any] | None) -> str:
    try:
        found = why(events, name, at=at, machine=machine)
    except ValueError as exc:
        return f'<span class="muted">{esc(exc)}</span>'
    lines = [f"written by {_write(found.last)}"]
    if found.from_initial:
        lines.append("the run was created with this value; no step has changed it")
    lines += [f"before that: {_write(w)}" for w in found.earlier[:5]]
    if len(found.earlier) > 5:
        lines.append(f"and {len(found.earlier) - 5} earlier writes")
    return "<br>".join(lines)


def _write(w: Write) -> str:
    what = f" ({esc(w.kind)} {esc(w.step)})" if w.step else f" ({esc(w.kind)})"
    model = f", model {esc(w.model)}" if w.model else ""
    return (
        f'<a href="?at={w.seq}#memory">seq {w.seq}</a> <b>{esc(w.trigger)}</b>'
        f" {esc(w.edge)}{what}{model}"
    )


def _errors(events: Sequence[Event]) -> str:
    failed = [e for e in events if e.error]
    if not failed:
        return ""
    items = "".join(
        f'<li><a href="?at={e.seq}#memory">seq {e.seq}</a> <b>{esc(e.trigger)}</b> attempt'
        f' {e.attempt}: <span class="error">{esc(e.error.get("type"))}</span>'
        f" {esc(e.error.get('message'))}</li>"
        for e in failed
        if e.error is not None
    )
    return f'<section id="errors"><h2>Errors</h2><ul>{items}</ul></section>'


def _conversation(events: Sequence[Event]) -> str:
    with_messages = [e for e in events if e.messages]
    if not with_messages:
        return ""
    blocks = "".join(
        f'<h3>seq {e.seq} · {esc(e.trigger)}</h3><div class="chat">{_messages(e.messages)}</div>'
        for e in with_messages
    )
    return f'<section id="conversation"><h2>Conversation</h2>{blocks}</section>'
