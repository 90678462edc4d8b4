"""A run report: one self-contained HTML page to read a run, share it, or attach it to an issue.

The page holds the state graph with the run drawn on it (inline SVG, see `drawn_svg`), a
timeline of the committed transitions, and for each step its output, the memory after it
(rebuilt from the events' patches) and the model conversation. Inline CSS, no script, nothing
fetched: it opens from a file, offline. Everything that comes from the run is escaped.
"""

from __future__ import annotations

import contextlib
import html
import json
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from pydantic import JsonValue

from statemachine import Machine, RunNotFound
from statemachine.engine import Graph
from storage import Event, RunRecord, Store

from .spending._usage_text import usage_line

__all__ = ["drawn_svg", "render_report", "report_html"]

_esc = html.escape


async def render_report(agent: Machine[Any] | None, store: Store, run_id: str) -> str:
    """The HTML report of the stored run `run_id` of `agent` (raises `RunNotFound`); with
    `agent=None`, everything but the graph (which needs the agent's table)."""
    record = await store.load(run_id)
    if record is None:
        raise RunNotFound(run_id)
    return report_html(agent, record, await store.history(run_id))


def report_html(
    machine: Machine[Any] | None,
    record: RunRecord,
    events: Sequence[Event],
    *,
    svg: bool = True,
) -> str:
    """The HTML report of a run, from its record and events (reads nothing).

    With `svg=False`, the graph is shown as Mermaid text instead of a picture; with
    `machine=None` (the agent is not known), it is left out, saying how to get it.
    """
    title = f"run {record.run_id} of {record.agent} v{record.version}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_esc(title)}</title>",
        f"<style>{_CSS}</style>",
        "</head><body><main>",
        _header(record, events),
        _graph(machine, record, events, svg=svg),
        _timeline(machine, events),
        _steps(machine, events),
        "</main></body></html>",
    ]
    return "\n".join(parts) + "\n"


def _graph(
    machine: Machine[Any] | None, record: RunRecord, events: Sequence[Event], *, svg: bool
) -> str:
    if machine is None:
        return (
            '<section><h2>Graph</h2><p class="note">The agent '
            f"<code>{_esc(record.agent)}</code> is not known where this report was written, so"
            " its graph is not drawn: <code>agentfsm report RUN_ID --agent MODULE:AGENT</code>"
            " (or registering the agent) draws it.</p></section>"
        )
    graph = machine.graph(run=record, events=events)
    if svg:
        picture = drawn_svg(graph)
    else:
        picture = (
            '<p class="note">The graph as Mermaid text: paste it into any Mermaid renderer.</p>'
            f'<pre class="code">{_esc(graph.mermaid())}</pre>'
        )
    return (
        '<section><h2>Graph</h2><figure class="graph">' + picture + "</figure>"
        '<p class="legend"><span class="key current">current state</span>'
        '<span class="key taken">taken (&times;&#8239;times)</span>'
        '<span class="key failed">failed step</span>'
        "<span>edge labels: trigger · step kind, [guard] or route</span></p></section>"
    )


_SMALL = 300
"""States + edges up to which a graph is always laid out in Python (see `drawn_svg`)."""


def drawn_svg(graph: Graph) -> str:
    """`graph` as an SVG element for a page. Laid out in Python, not by dot, where it is
    small (agents are): the same picture on every machine, and no edge label over another,
    which dot does not promise. A huge one takes dot where it is installed: seconds in
    Python, a fraction of one in dot."""
    small = len(graph.nodes) + len(graph.edges) <= _SMALL
    return _inline_svg(graph.svg(layout="python" if small else "auto"))


def _inline_svg(svg: str) -> str:
    """An SVG document as an element to put in HTML: no XML prolog, no doctype, no
    namespace declarations (HTML does not need them, and they are the only URLs in it)."""
    svg = svg[svg.index("<svg") :]
    return re.sub(r'\s+xmlns(?::xlink)?="[^"]*"', "", svg, count=2)


def _when(ts: float) -> str:
    if not ts:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _took(e: Event) -> str:
    seconds = max(e.ended_at - e.started_at, 0.0)
    return f"{seconds * 1000:.1f} ms" if seconds < 10 else f"{seconds:.1f} s"


def _tokens(e: Event) -> str:
    if not e.usage:
        return ""
    return f"{e.usage.get('input_tokens', 0)} → {e.usage.get('output_tokens', 0)}"


def _json(value: Any, indent: str = "") -> str:
    """Indented JSON that keeps short lists and objects on one line."""
    flat = json.dumps(value, ensure_ascii=False)
    if len(flat) + len(indent) <= 96 or not isinstance(value, dict | list) or not value:
        return flat
    inner = indent + "  "
    if isinstance(value, dict):
        items = [
            f"{inner}{json.dumps(k, ensure_ascii=False)}: {_json(v, inner)}"
            for k, v in value.items()
        ]
        return "{\n" + ",\n".join(items) + f"\n{indent}}}"
    return "[\n" + ",\n".join(f"{inner}{_json(v, inner)}" for v in value) + f"\n{indent}]"


def _model(machine: Machine[Any] | None, e: Event) -> str:
    """The model that answered: from the response messages, else the LLM step's label."""
    for message in reversed(e.messages):
        if isinstance(message, dict) and message.get("kind") == "response":
            name = message.get("model_name")
            if isinstance(name, str) and name:
                return name
    step_kind = (e.error or {}).get("step") if e.kind == "error" else e.kind
    if step_kind != "llm" or machine is None:
        return ""
    for t in machine.table.out.get(e.source, ()):
        if t.trigger == e.trigger and t.step is not None:
            return t.step.label
    return ""


def _header(record: RunRecord, events: Sequence[Event]) -> str:
    usage = [e.usage or {} for e in events]
    requests = sum(u.get("requests", 0) for u in usage)
    tokens_in = sum(u.get("input_tokens", 0) for u in usage)
    tokens_out = sum(u.get("output_tokens", 0) for u in usage)
    steps = sum(1 for e in events if e.kind not in ("start", "control"))
    failures = sum(1 for e in events if e.kind == "error")
    facts = [
        ("agent", f"{record.agent} v{record.version}"),
        ("state", record.state),
        ("status", record.status),
        ("commits", str(record.seq)),
        ("steps", f"{steps} ({failures} failed)" if failures else str(steps)),
        ("model requests", str(requests)),
        ("tokens in → out", f"{tokens_in} → {tokens_out}"),
        ("usage ledger", usage_line(record.usage)),
        ("created", _when(record.created_at)),
        ("updated", _when(record.updated_at)),
        ("held by", record.holder or "-"),
    ]
    cells = "".join(f"<div><dt>{_esc(k)}</dt><dd>{_esc(v)}</dd></div>" for k, v in facts)
    return (
        f'<header><h1>Run <code>{_esc(record.run_id)}</code> <span class="status'
        f' {_esc(record.status)}">{_esc(record.status)}</span></h1>'
        f"{_failure(record, events)}"
        f'<dl class="facts">{cells}</dl></header>'
    )


def _failure(record: RunRecord, events: Sequence[Event]) -> str:
    """For a failed run, first of all: the step that failed it and its error."""
    if record.status != "failed":
        return ""
    failed = next((e for e in reversed(events) if e.kind == "error" and e.error), None)
    if failed is None or failed.error is None:
        return ""
    return (
        f'<p class="failure">✗ step <b>{_esc(failed.trigger)}</b> failed'
        f' (<a href="#seq-{failed.seq}">seq {failed.seq}</a>, attempt {failed.attempt}):'
        f" {_esc(str(failed.error.get('type')))}: {_esc(str(failed.error.get('message')))}</p>"
    )


def _timeline(machine: Machine[Any] | None, events: Sequence[Event]) -> str:
    rows = []
    for e in events:
        error = f' <span class="error">{_esc(str(e.error.get("type")))}</span>' if e.error else ""
        rows.append(
            f'<tr class="{_esc(e.kind)}"><td class="num"><a href="#seq-{e.seq}">{e.seq}</a></td>'
            f"<td><b>{_esc(e.trigger)}</b>{error}</td>"
            f"<td>{_esc(e.source or '·')} → {_esc(e.dest)}</td>"
            f'<td>{_esc(e.kind)}</td><td class="num">{_took(e)}</td>'
            f'<td class="num">{e.attempt}</td><td class="num">{_esc(_tokens(e))}</td>'
            f"<td>{_esc(_model(machine, e))}</td></tr>"
        )
    return (
        "<section><h2>Timeline</h2><table><thead><tr><th>seq</th><th>trigger</th>"
        "<th>from → to</th><th>kind</th><th>duration</th><th>attempts</th><th>tokens</th>"
        "<th>model</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table></section>"
    )


def _steps(machine: Machine[Any] | None, events: Sequence[Event]) -> str:
    memory: dict[str, JsonValue] = {}
    cards = []
    for e in events:
        memory = {**memory, **e.patch}
        body = []
        if e.error:
            body.append(
                f'<p class="error">✗ {_esc(str(e.error.get("type")))}:'
                f" {_esc(str(e.error.get('message')))} (attempt {e.attempt})</p>"
            )
        if e.output is not None:
            body.append(f'<h4>output</h4><pre class="code">{_esc(_json(e.output))}</pre>')
        if e.kind == "start":
            body.append("<h4>initial memory</h4>")
        elif e.patch:
            changed = "".join(
                f"<dt>{_esc(k)}</dt><dd><pre>{_esc(_json(v))}</pre></dd>"
                for k, v in e.patch.items()
            )
            body.append(f'<h4>memory changed</h4><dl class="patch">{changed}</dl>')
        else:
            body.append('<p class="muted">memory unchanged</p>')
        open_ = " open" if e.kind == "start" else ""
        body.append(
            f"<details{open_}><summary>memory after seq {e.seq}</summary>"
            f'<pre class="code">{_esc(_json(memory))}</pre></details>'
        )
        if e.messages:
            body.append(f'<h4>conversation</h4><div class="chat">{_messages(e.messages)}</div>')
        meta = " · ".join(
            x
            for x in (e.kind, _took(e), _tokens(e) and f"tokens {_tokens(e)}", _model(machine, e))
            if x
        )
        cards.append(
            f'<article id="seq-{e.seq}" class="step {_esc(e.kind)}"><h3>'
            f'<span class="seq">#{e.seq}</span> {_esc(e.trigger)}'
            f' <span class="move">{_esc(e.source or "·")} → {_esc(e.dest)}</span>'
            f' <span class="meta">{_esc(meta)}</span></h3>' + "".join(body) + "</article>"
        )
    return "<section><h2>Steps</h2>" + "".join(cards) + "</section>"


def _text(value: Any) -> str:
    return value if isinstance(value, str) else _json(value)


def _bubble(who: str, css: str, content: str) -> str:
    return (
        f'<div class="msg {css}"><div class="who">{_esc(who)}</div>'
        f'<div class="text">{_esc(content)}</div></div>'
    )


def _messages(messages: Sequence[JsonValue]) -> str:
    """pydantic-ai messages (their JSON form), part by part, as a readable conversation."""
    out = []
    for message in messages:
        if not isinstance(message, dict):
            out.append(_bubble("message", "other", _text(message)))
            continue
        parts = message.get("parts")
        parts = parts if isinstance(parts, list) else []
        if message.get("kind") == "request":
            if message.get("instructions"):
                out.append(_bubble("instructions", "system", _text(message["instructions"])))
            for part in parts:
                out.append(_request_part(part))
        elif message.get("kind") == "response":
            model = message.get("model_name") or "model"
            for part in parts:
                out.append(_response_part(str(model), part))
        else:
            out.append(_bubble("message", "other", _json(message)))
    return "".join(out)


def _request_part(part: JsonValue) -> str:
    if not isinstance(part, dict):
        return _bubble("request", "other", _text(part))
    kind = part.get("part_kind")
    if kind == "system-prompt":
        return _bubble("system", "system", _text(part.get("content")))
    if kind == "user-prompt":
        return _bubble("user", "user", _text(part.get("content")))
    if kind == "tool-return":
        return _bubble(f"tool {part.get('tool_name')} returned", "tool", _text(part.get("content")))
    if kind == "retry-prompt":
        return _bubble("retry: output rejected", "retry", _text(part.get("content")))
    return _bubble(str(kind or "request"), "other", _json(part))


def _response_part(model: str, part: JsonValue) -> str:
    if not isinstance(part, dict):
        return _bubble(model, "other", _text(part))
    kind = part.get("part_kind")
    if kind == "text":
        return _bubble(model, "model", _text(part.get("content")))
    if kind == "tool-call":
        args = part.get("args")
        if isinstance(args, str):
            with contextlib.suppress(ValueError):  # shown as sent when it is not JSON
                args = json.loads(args)
        return _bubble(f"{model} calls tool {part.get('tool_name')}", "tool", _text(args))
    if kind == "thinking":
        return _bubble(f"{model} (thinking)", "thinking", _text(part.get("content")))
    return _bubble(f"{model}: {kind}", "other", _json(part))


_CSS = """
:root { --blue: #1565c0; --red: #c62828; --green: #2e7d32; --grey: #6b7280; --line: #e5e7eb; }
* { box-sizing: border-box; }
body { margin: 0; background: #f6f7f9; color: #1f2937;
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; }
main { max-width: 1200px; margin: 0 auto; padding: 24px; }
h1 { font-size: 22px; margin: 0 0 12px; }
h2 { font-size: 17px; margin: 28px 0 10px; }
h3 { font-size: 15px; margin: 0 0 8px; }
h4 { font-size: 12px; text-transform: uppercase; letter-spacing: .04em; color: var(--grey);
  margin: 12px 0 4px; }
code, pre { font: 12.5px/1.4 ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace; }
pre { white-space: pre-wrap; overflow-wrap: anywhere; margin: 0; }
section, header { background: #fff; border: 1px solid var(--line); border-radius: 8px;
  padding: 16px 20px; margin-bottom: 16px; }
section h2 { margin-top: 0; }
.facts { display: grid; grid-template-columns: repeat(auto-fill, minmax(190px, 1fr));
  gap: 8px 20px; margin: 0; }
.facts dt { font-size: 11px; text-transform: uppercase; color: var(--grey); }
.facts dd { margin: 0; font-weight: 600; overflow-wrap: anywhere; }
.status { font-size: 13px; padding: 2px 10px; border-radius: 12px; vertical-align: middle;
  background: #e5e7eb; }
.status.done { background: #e8f5e9; color: var(--green); }
.status.failed, .status.cancelled { background: #fdecea; color: var(--red); }
.status.running { background: #e3f2fd; color: var(--blue); }
.status.waiting { background: #fff8e1; color: #b26a00; }
figure.graph { margin: 0; overflow-x: auto; text-align: center; }
figure.graph svg { height: auto; }  /* its own size: a wide graph scrolls, its text stays legible */
.legend { color: var(--grey); font-size: 12px; display: flex; gap: 18px; flex-wrap: wrap; }
.key::before { content: ""; display: inline-block; width: 22px; height: 0; margin-right: 6px;
  vertical-align: middle; border-top: 3px solid; }
.key.current::before { height: 12px; border: 3px solid var(--blue); border-radius: 4px; }
.key.taken::before { border-color: var(--blue); }
.key.failed::before { border-color: var(--red); border-top-style: dashed; }
.note { color: #b26a00; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: 5px 8px; border-bottom: 1px solid var(--line);
  vertical-align: top; }
th { font-size: 12px; color: var(--grey); font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.error td { background: #fff5f5; }
tr.start td, tr.control td { color: var(--grey); }
a { color: var(--blue); text-decoration: none; }
.step { border-top: 1px solid var(--line); padding: 14px 0 6px; }
.step:first-of-type { border-top: 0; padding-top: 0; }
.step.error h3 { color: var(--red); }
.seq { color: var(--grey); font-weight: 400; }
.move { font-weight: 400; color: #374151; margin-left: 6px; }
.meta { font-weight: 400; color: var(--grey); font-size: 12px; margin-left: 8px; }
.error { color: var(--red); font-weight: 600; }
.failure { color: var(--red); background: #fdecea; border-radius: 6px; padding: 8px 12px;
  margin: 0 0 12px; overflow-wrap: anywhere; }
.muted { color: var(--grey); margin: 6px 0; }
.code { background: #f8fafc; border: 1px solid var(--line); border-radius: 6px; padding: 8px 10px;
  max-height: 360px; overflow: auto; }
.patch { margin: 0; display: grid; grid-template-columns: max-content 1fr; gap: 4px 12px; }
.patch dt { font-weight: 600; }
.patch dd { margin: 0; }
details { margin: 8px 0; }
summary { cursor: pointer; color: var(--grey); font-size: 12px; }
.chat { display: flex; flex-direction: column; gap: 6px; }
.msg { border-radius: 8px; padding: 6px 10px; max-width: 92%; border: 1px solid var(--line); }
.msg .who { font-size: 11px; text-transform: uppercase; letter-spacing: .03em; color: var(--grey); }
.msg .text { white-space: pre-wrap; overflow-wrap: anywhere; }
.msg.system { background: #f3f4f6; }
.msg.user { background: #fff; }
.msg.model { background: #e3f2fd; align-self: flex-end; }
.msg.tool { background: #f1f8e9; }
.msg.retry { background: #fdecea; }
.msg.thinking { background: #faf5ff; align-self: flex-end; font-style: italic; }
.msg.other { background: #f9fafb; }
"""
