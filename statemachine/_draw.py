"""Drawing a machine's graph, and a run on top of it: Mermaid, DOT, SVG and PNG.

`Machine.graph()` builds a `Graph`: plain data (one node per state, one edge per transition,
source and route) taken from the checked table. Mermaid and DOT text are written from it by
small pure functions that need nothing installed; SVG comes from Graphviz's `dot` program
when it is installed, else from a small layered layout in Python (`_layout`); PNG needs `dot`,
the only thing here that runs outside Python. Nothing is drawn through a network service.

Why not `transitions`' own diagrams (`GraphMachine`)? It is fast enough, but it merges every
transition between two states into one edge with one style, so a trigger the run took cannot
be told apart from its siblings; it does not know our step kinds, routes or per-transition
failure states; and its Mermaid output is a `stateDiagram`, in which edges cannot be styled
at all, so a run's path (bold, with counts) and a failed step (red) cannot be shown there.
Our table already holds everything to draw; writing the text from it is a few lines.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal, Protocol

from storage import Event, RunRecord

from ._graph_parts import Edge, Node
from ._layout_svg import layered_svg
from .errors import RendererMissing

if TYPE_CHECKING:
    from ._spec import MachineSpec
    from ._table import Transition

__all__ = ["Edge", "Graph", "Node", "draw"]

_NOT_TABLE_EDGES = frozenset({"start", "control"})
"""Event kinds that are not a transition of the table ("error" events are drawn in red)."""
_BLUE, _RED, _GREY = "#1565c0", "#c62828", "#6b7280"
_NODE_STYLE = {  # fill, border
    "initial": ("#e8f5e9", "#2e7d32"),
    "final": ("#e8f5e9", "#2e7d32"),
    "failure": ("#fdecea", _RED),
    "waiting": ("#fff8e1", "#b26a00"),
    "": ("#ffffff", "#555555"),
}
_VISITED_FILL = "#e3f2fd"
_FONT = "Helvetica,Arial,sans-serif"
_BIG = 300
"""Nodes + edges above which dot is asked for a quicker, rougher layout."""


class DrawnRun(Protocol):
    """A run as `Graph.of_run` draws it (`statemachine.Run` is one)."""

    @property
    def machine(self) -> MachineSpec[Any]: ...

    @property
    def record(self) -> RunRecord: ...

    async def history(self, from_seq: int = 0) -> list[Event]: ...


@dataclass(frozen=True, kw_only=True, slots=True)
class Graph:
    """A machine's states and transitions, optionally with a run drawn on them.

    Get one from `Machine.graph()` (or `await Graph.of_run(run)`); write it out with
    `mermaid()` or `dot()` (pure text, nothing installed needed), `svg()` (anywhere; with
    Graphviz's `dot` when installed) or `png()` (Graphviz's `dot` program).
    """

    title: str
    nodes: tuple[Node, ...]
    edges: tuple[Edge, ...]
    current: str | None = None
    """The state the drawn run is in; None without a run."""

    @classmethod
    async def of_run(cls, run: DrawnRun) -> Graph:
        """The graph of `run`'s machine with the run drawn on it (reads its history)."""
        return draw(run.machine, run.record, await run.history())

    def mermaid(self) -> str:
        """Mermaid flowchart text (renders on GitHub, in mermaid.live, in many wikis).

        Mermaid renderers refuse more than 500 edges or 50,000 characters by default: draw
        a bigger machine with `svg()`.
        """
        return _mermaid(self)

    def dot(self) -> str:
        """Graphviz DOT text."""
        return _dot(self)

    def svg(self, *, layout: Literal["auto", "dot", "python"] = "auto") -> str:
        """An SVG picture: laid out by Graphviz's `dot` program when it is installed, else
        by a small layered layout in Python (`layout="python"` always; `"dot"` only dot,
        raising `RendererMissing` without it)."""
        if layout == "python" or (layout == "auto" and shutil.which("dot") is None):
            return layered_svg(self)
        return _render(self.dot(), "svg").decode()

    def png(self) -> bytes:
        """A PNG picture, drawn by Graphviz's `dot` program (raises `RendererMissing`)."""
        return _render(self.dot(), "png")


def draw(
    machine: MachineSpec[Any],
    run: RunRecord | DrawnRun | None = None,
    events: Sequence[Event] | None = None,
) -> Graph:
    """The `Graph` of `machine`; with `run` and its `events`, the run drawn on it."""
    table = machine.table
    title = f"{machine.name} v{machine.version}"
    edges: list[Edge] = []
    for t in table.transitions:
        step = t.step.kind if t.step is not None else "move"
        for source in t.source:
            base = Edge(source=source, dest="", trigger=t.trigger, step=step, guard=t.guard_label)
            if t.routes:
                edges += [replace(base, dest=d, route=r) for r, d in t.routes.items()]
            else:
                edges.append(replace(base, dest=t.dest or ""))
            failure = t.on_error if t.on_error is not None else table.on_error
            if failure is not None and (t.on_error is not None or _can_fail(t, failure)):
                edges.append(replace(base, dest=failure, on_error=True))
            if t.on_timeout is not None:
                edges.append(replace(base, dest=t.on_timeout, timeout=t.timeout))

    kinds: dict[str, list[str]] = {s: [] for s in table.states}
    kinds[table.initial].append("initial")
    for s in table.final:
        kinds[s].append("final")
    if table.on_error is not None:
        kinds[table.on_error].append("failure")
    for s in table.waiting:  # states left by `wait` steps (outside events) only
        kinds[s].append("waiting")

    current: str | None = None
    visited: set[str] = set()
    if run is not None or events:
        record = run if isinstance(run, RunRecord) or run is None else run.record
        if record is not None and events is None:
            raise TypeError(
                "graph(run=...) needs the run's events too: graph(run=run,"
                " events=await run.history()), or await Graph.of_run(run)"
            )
        events = events or ()
        if record is not None and record.agent != machine.name:
            raise ValueError(
                f"run {record.run_id!r} belongs to {record.agent!r}, not to {machine.name!r}"
            )
        edges = _overlay(machine, edges, events)
        visited = {s for e in events for s in (e.source, e.dest) if s}
        current = record.state if record is not None else events[-1].dest
        if current not in kinds:
            raise ValueError(f"{machine.name!r} has no state {current!r}, where the run is")
        if record is not None:
            title += f" · run {record.run_id} ({record.status}) at {current}"
        else:
            title += f" · run at {current}"

    nodes = tuple(
        Node(name=s, kinds=tuple(kinds[s]), current=s == current, visited=s in visited)
        for s in table.states
    )
    return Graph(title=title, nodes=nodes, edges=tuple(edges), current=current)


def _can_fail(t: Transition, failure: str) -> bool:
    """Whether the transition can send a run to the machine's `failure` state, other than by
    its own destination: its step can give up (a wait cannot: a bad event is refused at
    `send`), or it has a visit limit."""
    if failure in t.dests:
        return False
    return t.max_visits is not None or (t.step is not None and not t.waits)


def _overlay(machine: MachineSpec[Any], edges: list[Edge], events: Iterable[Event]) -> list[Edge]:
    """`edges` with the run's counts; the run's moves off the table become extra edges."""
    states = set(machine.table.states)
    index: dict[tuple[str, str, str, str], int] = {}
    for i, e in enumerate(edges):
        # Two edges can share a key (two routes, or two guarded rows, to one state): the
        # event does not say which, so the first in table order gets the count.
        way = "error" if e.on_error else "timeout" if e.timeout is not None else ""
        index.setdefault((e.source, e.trigger, e.dest, way), i)
    taken = [0] * len(edges)
    failed = [0] * len(edges)
    extra: list[Edge] = []
    for ev in events:
        if ev.kind in _NOT_TABLE_EDGES:
            continue
        for s in (ev.source, ev.dest):
            if s not in states:
                raise ValueError(
                    f"event {ev.seq} ({ev.trigger!r}) of the run goes through state {s!r},"
                    f" which {machine.name!r} v{machine.version} does not have"
                )
        error = ev.kind == "error"
        way = ev.kind if ev.kind in ("error", "timeout") else ""
        found = index.get((ev.source, ev.trigger, ev.dest, way))
        if found is not None:
            i = found
        else:
            step = str((ev.error or {}).get("step", ev.kind)) if error else ev.kind
            i = len(edges) + len(extra)
            index[(ev.source, ev.trigger, ev.dest, way)] = i
            extra.append(
                Edge(source=ev.source, dest=ev.dest, trigger=ev.trigger, step=step, in_table=False)
            )
            taken.append(0)
            failed.append(0)
        if error:
            failed[i] += 1
        else:
            taken[i] += 1
    return [
        replace(e, taken=taken[i], failed=failed[i]) if taken[i] or failed[i] else e
        for i, e in enumerate([*edges, *extra])
    ]


# --- Mermaid -------------------------------------------------------------------------------

_MERMAID_ID = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_MERMAID_RESERVED = frozenset(
    {"end", "graph", "subgraph", "flowchart", "style", "linkstyle", "classdef", "class", "click",
     "call", "href", "default", "direction", "tb", "bt", "rl", "lr", "td"}
)  # fmt: skip
_MERMAID_SHAPES = {  # opening, closing bracket of the node per kind
    "initial": ('(["', '"])'),
    "final": ('((("', '")))'),
    "failure": ('{{"', '"}}'),
    "waiting": ('[/"', '"/]'),
    "": ('("', '")'),
}


def _mermaid_text(text: str) -> str:
    """`text` safe inside a quoted Mermaid label (entity codes; no HTML from the user)."""
    return (
        text.replace("#", "#35;")
        .replace("&", "#amp;")
        .replace('"', "#quot;")
        .replace("<", "#lt;")
        .replace(">", "#gt;")
        .replace("\n", " ")
    )


def _mermaid_ids(names: Sequence[str]) -> dict[str, str]:
    """Readable node ids where the state name is one; `n<i>` for names Mermaid would misread."""
    taken = set(names)
    ids: dict[str, str] = {}
    for i, name in enumerate(names):
        if _MERMAID_ID.fullmatch(name) and name.lower() not in _MERMAID_RESERVED:
            ids[name] = name
            continue
        alias = f"n{i}"
        while alias in taken:
            alias += "_"
        taken.add(alias)
        ids[name] = alias
    return ids


def _mermaid(g: Graph) -> str:
    ids = _mermaid_ids([n.name for n in g.nodes])
    out = ["---", f"title: {json.dumps(g.title, ensure_ascii=False)}", "---", "flowchart LR"]
    for n in g.nodes:
        opening, closing = _MERMAID_SHAPES[n.kind]
        label = _mermaid_text(n.name) + (f"<br/><i>{_mermaid_text(n.note)}</i>" if n.note else "")
        out.append(f"  {ids[n.name]}{opening}{label}{closing}")
    styled: dict[str, list[str]] = {_BLUE: [], _RED: []}
    for i, e in enumerate(g.edges):
        if e.taken or e.failed:
            arrow = "==>"
            styled[_RED if e.failed else _BLUE].append(str(i))
        else:
            dashed = e.on_error or e.timeout is not None or not e.in_table
            arrow = "-.->" if dashed else "-->"
        label = "<br/>".join(_mermaid_text(line) for line in e.lines)
        out.append(f'  {ids[e.source]} {arrow}|"{label}"| {ids[e.dest]}')
    by_class: dict[str, list[str]] = {}
    for n in g.nodes:
        name = n.kind or ("visited" if n.visited else "")
        if name:
            by_class.setdefault(name, []).append(ids[n.name])
    for name, members in by_class.items():
        fill, stroke = _NODE_STYLE.get(name, (_VISITED_FILL, _NODE_STYLE[""][1]))
        extra = {"final": ",stroke-width:2px", "waiting": ",stroke-dasharray:5 3"}.get(name, "")
        out.append(f"  classDef is_{name} fill:{fill},stroke:{stroke}{extra}")
        out.append(f"  class {','.join(members)} is_{name}")
    for color, links in styled.items():
        if links:
            style = f"stroke:{color},stroke-width:3px,color:{color}"
            out.append(f"  linkStyle {','.join(links)} {style}")
    if g.current is not None:
        out.append(f"  style {ids[g.current]} stroke:{_BLUE},stroke-width:4px")
    return "\n".join(out) + "\n"


# --- DOT -----------------------------------------------------------------------------------


def _dot_id(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _dot_attrs(attrs: dict[str, str]) -> str:
    """`[k=v, ...]`; values starting with "<" are HTML labels, the rest are quoted."""
    return ", ".join(f"{k}={v if v.startswith('<') else _dot_id(v)}" for k, v in attrs.items())


def _dot(g: Graph) -> str:
    esc = html.escape
    graph = {
        "rankdir": "LR",
        "labelloc": "t",
        "fontname": _FONT,
        "fontsize": "14",
        "nodesep": "0.3",
        "ranksep": "0.45",
        "pad": "0.2",
        "label": f"<{esc(g.title)}>",
    }
    if len(g.nodes) + len(g.edges) > _BIG:
        # dot spends most of its time on node positions (network simplex); capping its
        # passes draws 200 states / 1,000 edges in 0.4 s instead of 2 s (bench/draw.py).
        graph["nslimit"] = "2"
    node = {
        "shape": "box",
        "style": "rounded,filled",
        "fontname": _FONT,
        "fontsize": "12",
        "margin": "0.14,0.06",
        "fillcolor": "#ffffff",
        "color": "#555555",
    }
    edge = {
        "fontname": _FONT,
        "fontsize": "10",
        "color": _GREY,
        "fontcolor": "#374151",
        "arrowsize": "0.7",
    }
    out = [
        "digraph agentfsm {",
        f"  graph [{_dot_attrs(graph)}]",
        f"  node [{_dot_attrs(node)}]",
        f"  edge [{_dot_attrs(edge)}]",
    ]
    for n in g.nodes:
        fill, stroke = _NODE_STYLE[n.kind]
        label = esc(n.name)
        if n.note:
            label += f'<BR/><FONT POINT-SIZE="9" COLOR="{stroke}">{esc(n.note)}</FONT>'
        attrs = {"label": f"<{label}>"}
        if n.kind or n.visited:
            attrs["fillcolor"] = fill if n.kind else _VISITED_FILL
            attrs["color"] = stroke
        if n.kind == "final":
            attrs["peripheries"] = "2"
        if n.kind == "waiting":
            attrs["style"] = "rounded,filled,dashed"
        if n.current:
            attrs.update(color=_BLUE, penwidth="3")
        out.append(f"  {_dot_id(n.name)} [{_dot_attrs(attrs)}]")
    for e in g.edges:
        label = "<BR/>".join(esc(line) for line in e.lines)
        attrs = {}
        if e.on_error or e.timeout is not None or not e.in_table:
            attrs["style"] = "dashed"
        if e.taken or e.failed:
            color = _RED if e.failed else _BLUE
            attrs.update(color=color, fontcolor=color, penwidth="2.5")
            label = f"<B>{label}</B>"
        attrs["label"] = f"<{label}>"
        out.append(f"  {_dot_id(e.source)} -> {_dot_id(e.dest)} [{_dot_attrs(attrs)}]")
    out.append("}")
    return "\n".join(out) + "\n"


# --- rendering -----------------------------------------------------------------------------


def _render(dot_text: str, fmt: str) -> bytes:
    """Run Graphviz's `dot` program on `dot_text`; its output in format `fmt`."""
    program = shutil.which("dot")
    if program is None:
        raise RendererMissing(
            f"drawing {fmt.upper()} needs Graphviz's `dot` program, which is not on PATH:"
            " install Graphviz (apt-get install graphviz, or brew install graphviz). Mermaid"
            " and DOT text need nothing installed"
        )
    try:
        done = subprocess.run(
            [program, f"-T{fmt}"], input=dot_text.encode(), capture_output=True, timeout=120
        )
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"Graphviz's dot took over 120 s to draw {fmt.upper()}") from None
    if done.returncode != 0:
        why = done.stderr.decode(errors="replace").strip()
        raise RuntimeError(f"Graphviz's dot failed ({done.returncode}) to draw {fmt}: {why}")
    return done.stdout
