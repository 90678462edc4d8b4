"""A graph drawn as SVG in pure Python: a small layered (Sugiyama) layout, left to right.

`Graph.svg()` uses it when Graphviz's `dot` is not installed, so the UI and the run report
draw on any machine. The steps are the classic ones, kept short:

1. ranks: a depth-first search from the initial state turns the edges that close a loop
   around (they are drawn back, right to left); each state gets the longest path to it;
2. every edge becomes a chain of points, one per column it crosses; states sit in the even
   columns and each edge's label is a box of its own in the odd column next to its source,
   so labels take part in the layout like states do and can never overlap one another;
3. crossings: a few barycenter sweeps over the columns, keeping the order with the fewest
   crossings;
4. heights: each box is pulled towards its neighbours' mean, then the column is spread out
   again with the least movement that keeps the boxes apart (pool adjacent violators);
5. SVG: inside a column every edge runs straight across its own box; between columns it is
   a curve. A self-loop is an arc over its state, its label above.

Text widths are estimated (no font metrics in Python): a generous width per character.
"""

from __future__ import annotations

import html
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from ._graph_parts import Edge, Node

__all__ = ["Rect", "layered_svg", "placed"]


class Graph(Protocol):
    """What the layout reads of a graph (`statemachine._draw.Graph` is one)."""

    @property
    def title(self) -> str: ...

    @property
    def nodes(self) -> tuple[Node, ...]: ...

    @property
    def edges(self) -> tuple[Edge, ...]: ...

    @property
    def current(self) -> str | None: ...


Rect = tuple[float, float, float, float]
"""x0, y0, x1, y1 in the picture."""

_FONT = "Helvetica,Arial,sans-serif"
_NAME_PX, _NOTE_PX, _LABEL_PX, _TITLE_PX = 13, 10, 11, 14
_CHAR = 0.62  # an estimated character width, in font sizes (wide enough for Helvetica)
_LINE = 1.3  # line height, in font sizes
_GAP_Y = 14.0  # between boxes of one column
_PAD = 12.0
_BLUE, _RED, _GREY, _INK = "#1565c0", "#c62828", "#6b7280", "#374151"
_FILL = {  # fill, border per node kind
    "initial": ("#e8f5e9", "#2e7d32"),
    "final": ("#e8f5e9", "#2e7d32"),
    "failure": ("#fdecea", _RED),
    "waiting": ("#fff8e1", "#b26a00"),
    "": ("#ffffff", "#555555"),
}
_VISITED = "#e3f2fd"
_BIG = 4000
"""Boxes (states, labels, bend points) above which the layout takes fewer, cheaper passes."""


@dataclass(slots=True)
class _Box:
    """A box in a column: a state, an edge's label, or a bend point of a long edge."""

    column: int
    width: float
    height: float
    state: int | None = None  # index into graph.nodes
    label: int | None = None  # index into graph.edges
    top: float = 0.0  # extra room above the state's box (its self-loops)
    order: float = 0.0
    y: float = 0.0  # centre
    ups: list[int] = field(default_factory=list)  # boxes in the column to the left
    downs: list[int] = field(default_factory=list)  # boxes in the column to the right


def _text_width(text: str, px: float) -> float:
    return len(text) * px * _CHAR


def layered_svg(graph: Graph) -> str:
    """`graph` as an SVG document, laid out here (nothing installed needed)."""
    return _laid_out(graph)[0]


def placed(graph: Graph) -> list[tuple[str, str, Rect]]:
    """Where `layered_svg` puts things: ("state", name, rect) and ("label", trigger, rect)."""
    return _laid_out(graph)[1]


def _laid_out(graph: Graph) -> tuple[str, list[tuple[str, str, Rect]]]:
    names = [n.name for n in graph.nodes]
    index = {name: i for i, name in enumerate(names)}
    edges = [e for e in graph.edges if e.source in index and e.dest in index]
    rank = _ranks(len(names), [(index[e.source], index[e.dest]) for e in edges])
    boxes: list[_Box] = []
    for i, n in enumerate(graph.nodes):
        width = max(_text_width(n.name, _NAME_PX), _text_width(n.note, _NOTE_PX)) + 28
        height = _NAME_PX * _LINE + (_NOTE_PX * _LINE if n.note else 0) + 14
        boxes.append(_Box(column=2 * rank[i], width=width, height=height, state=i))
    loops: dict[int, list[int]] = {}
    chains: list[tuple[int, list[int], bool]] = []  # (edge, boxes left to right, drawn back)
    for k, e in enumerate(edges):
        s, d = index[e.source], index[e.dest]
        if s == d:
            loops.setdefault(s, []).append(k)
            continue
        back = rank[s] > rank[d]
        left, right = (d, s) if back else (s, d)
        chain = [left]
        label_column = 2 * rank[s] - 1 if back else 2 * rank[s] + 1
        for column in range(2 * rank[left] + 1, 2 * rank[right]):
            if column == label_column:
                w, h = _label_size(e)
                boxes.append(_Box(column=column, width=w, height=h + 6, label=k))
            else:
                boxes.append(_Box(column=column, width=0.0, height=4.0))
            chain.append(len(boxes) - 1)
        chain.append(right)
        for a, b in itertools.pairwise(chain):
            boxes[a].downs.append(b)
            boxes[b].ups.append(a)
        chains.append((k, chain, back))
    for s, ks in loops.items():  # room over the state for its loops and their labels
        sizes = [_label_size(edges[k]) for k in ks]
        box = boxes[s]
        box.width = max(box.width, *(w for w, _ in sizes))
        box.top = sum(h + 2 for _, h in sizes) + 10 * len(ks) + 8
        box.height += box.top
    columns = _order(boxes)
    _heights(boxes, columns)
    return _svg(graph, edges, boxes, columns, chains, loops)


def _label_size(e: Edge) -> tuple[float, float]:
    lines = e.lines
    return max(_text_width(line, _LABEL_PX) for line in lines) + 8, len(lines) * _LABEL_PX * _LINE


def _ranks(count: int, pairs: Sequence[tuple[int, int]]) -> list[int]:
    """Each state's column: the longest path to it once the edges closing loops are turned."""
    out: list[list[int]] = [[] for _ in range(count)]
    for s, d in pairs:
        if s != d:
            out[s].append(d)
    back: set[tuple[int, int]] = set()
    seen = [0] * count  # 0 new, 1 on the stack, 2 done
    for root in range(count):  # the initial state is first in table order
        if seen[root]:
            continue
        stack = [(root, iter(out[root]))]
        seen[root] = 1
        while stack:
            node, rest = stack[-1]
            nxt = next(rest, None)
            if nxt is None:
                seen[node] = 2
                stack.pop()
            elif seen[nxt] == 1:
                back.add((node, nxt))
            elif seen[nxt] == 0:
                seen[nxt] = 1
                stack.append((nxt, iter(out[nxt])))
    dag = [[d for d in out[s] if (s, d) not in back] for s in range(count)]
    indegree = [0] * count
    for s in range(count):
        for d in dag[s]:
            indegree[d] += 1
    rank = [0] * count
    ready = [s for s in range(count) if indegree[s] == 0]
    while ready:
        s = ready.pop()
        for d in dag[s]:
            rank[d] = max(rank[d], rank[s] + 1)
            indegree[d] -= 1
            if indegree[d] == 0:
                ready.append(d)
    return rank


def _order(boxes: list[_Box]) -> list[list[int]]:
    """The boxes of each column, top to bottom, with few crossings (barycenter sweeps)."""
    width = max(b.column for b in boxes) + 1
    columns: list[list[int]] = [[] for _ in range(width)]
    placed: set[int] = set()

    def visit(start: int) -> None:  # first order: depth first, so chains start together
        stack = [start]
        while stack:
            i = stack.pop()
            if i in placed:
                continue
            placed.add(i)
            columns[boxes[i].column].append(i)
            stack.extend(reversed(boxes[i].downs))

    for i, b in enumerate(boxes):
        if b.state is not None:
            visit(i)
    for i in range(len(boxes)):
        visit(i)
    # A big graph (long edges make many bend points) gets fewer sweeps and keeps the last
    # order instead of counting crossings after each: seconds otherwise, in pure Python.
    big = len(boxes) > _BIG
    best = [list(c) for c in columns]
    fewest = 0 if big else _crossings(boxes, columns)
    for sweep in range(4 if big else 12):
        down = sweep % 2 == 0
        steps = range(1, width) if down else range(width - 2, -1, -1)
        for c in steps:
            for pos, i in enumerate(columns[c]):
                boxes[i].order = pos
            near = [boxes[i].ups if down else boxes[i].downs for i in columns[c]]
            for pos, (i, others) in enumerate(zip(columns[c], near, strict=True)):
                if others:
                    spots = [boxes[j].order for j in others]
                    boxes[i].y = sum(spots) / len(spots)
                else:
                    boxes[i].y = pos
            columns[c].sort(key=lambda i: boxes[i].y)
            for pos, i in enumerate(columns[c]):
                boxes[i].order = pos
        if big:
            best = [list(c) for c in columns]
            continue
        crossings = _crossings(boxes, columns)
        if crossings < fewest:
            fewest, best = crossings, [list(c) for c in columns]
    for column in best:
        for pos, i in enumerate(column):
            boxes[i].order = pos
    return best


def _crossings(boxes: list[_Box], columns: list[list[int]]) -> int:
    """Edge crossings between neighbouring columns (counted with a Fenwick tree)."""
    for column in columns:
        for pos, i in enumerate(column):
            boxes[i].order = pos
    total = 0
    for column in columns[:-1]:
        ends = sorted(
            (int(boxes[i].order), int(boxes[j].order)) for i in column for j in boxes[i].downs
        )
        if not ends:
            continue
        size = max(b for _, b in ends) + 2
        tree = [0] * (size + 1)
        seen = 0
        for _, b in ends:
            k = b + 2  # count the ends seen so far that lie strictly below b
            below = 0
            while k > 0:
                below += tree[k]
                k -= k & -k
            total += seen - below
            k = b + 1
            while k <= size:
                tree[k] += 1
                k += k & -k
            seen += 1  # noqa: SIM113 (counts ends, not loop turns)
    return total


def _heights(boxes: list[_Box], columns: list[list[int]]) -> None:
    """Each box's centre: near its neighbours', boxes of a column apart by `_GAP_Y`."""
    for column in columns:  # first: stacked from the top
        y = 0.0
        for i in column:
            boxes[i].y = y + boxes[i].height / 2
            y += boxes[i].height + _GAP_Y
    for sweep in range(4 if len(boxes) > _BIG else 10):
        down = sweep % 2 == 0
        order = columns if down else columns[::-1]
        for column in order:
            wanted = []
            for i in column:
                near = boxes[i].ups + boxes[i].downs
                own = boxes[i].y
                wanted.append(sum(boxes[j].y for j in near) / len(near) if near else own)
            for i, y in zip(column, _spread(boxes, column, wanted), strict=True):
                boxes[i].y = y
    low = min(boxes[i].y - boxes[i].height / 2 for c in columns for i in c)
    for b in boxes:
        b.y -= low


def _spread(boxes: list[_Box], column: list[int], wanted: list[float]) -> list[float]:
    """Centres as near `wanted` as can be (least squares) with the boxes apart, in order."""
    offsets = [0.0]
    for a, b in itertools.pairwise(column):
        offsets.append(offsets[-1] + (boxes[a].height + boxes[b].height) / 2 + _GAP_Y)
    blocks: list[list[float]] = []  # [sum, count]; pooled means must not decrease
    for want, off in zip(wanted, offsets, strict=True):
        blocks.append([want - off, 1.0])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            total, count = blocks.pop()
            blocks[-1][0] += total
            blocks[-1][1] += count
    out: list[float] = []
    for total, count in blocks:
        out += [total / count] * int(count)
    return [z + off for z, off in zip(out, offsets, strict=True)]


def _svg(
    graph: Graph,
    edges: list[Edge],
    boxes: list[_Box],
    columns: list[list[int]],
    chains: list[tuple[int, list[int], bool]],
    loops: dict[int, list[int]],
) -> tuple[str, list[tuple[str, str, Rect]]]:
    esc = html.escape
    rects: list[tuple[str, str, Rect]] = []
    widths = [max((boxes[i].width for i in c), default=0.0) for c in columns]
    gaps = []
    for c in range(len(columns) - 1):
        rise = max(
            (abs(boxes[i].y - boxes[j].y) for i in columns[c] for j in boxes[i].downs),
            default=0.0,
        )
        gaps.append(min(28 + rise * 0.12, 80))
    lefts = []
    x = _PAD
    for c, w in enumerate(widths):
        lefts.append(x)
        x += w + (gaps[c] if c < len(gaps) else 0)
    title_h = _TITLE_PX * _LINE + 8
    top = _PAD + title_h
    total_w = max(x + _PAD, _text_width(graph.title, _TITLE_PX) + 2 * _PAD)
    total_h = top + max((b.y + b.height / 2 for b in boxes), default=0.0) + _PAD
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{total_w:.0f}" height="{total_h:.0f}"'
        f' viewBox="0 0 {total_w:.1f} {total_h:.1f}" font-family="{_FONT}" role="img">',
        f"<title>{esc(graph.title)}</title>",
        f'<text x="{total_w / 2:.1f}" y="{_PAD + _TITLE_PX:.1f}" text-anchor="middle"'
        f' font-size="{_TITLE_PX}">{esc(graph.title)}</text>',
    ]

    def centre_x(i: int) -> float:
        c = boxes[i].column
        return lefts[c] + widths[c] / 2

    def state_box(i: int) -> tuple[float, float, float, float]:  # x0, y0, x1, y1
        b = boxes[i]
        y0 = top + b.y - b.height / 2 + b.top
        return centre_x(i) - b.width / 2, y0, centre_x(i) + b.width / 2, top + b.y + b.height / 2

    def anchor(i: int) -> float:  # where edges meet the box: the state's middle, a label's top
        b = boxes[i]
        if b.state is not None:
            _, y0, _, y1 = state_box(i)
            return (y0 + y1) / 2
        if b.label is not None:
            return top + b.y - b.height / 2 + 2
        return top + b.y

    ports: dict[tuple[int, int], float] = {}  # (chain number, 0 or -1): y where it meets a state
    for side, near in ((0, 1), (-1, -2)):
        meeting: dict[int, list[tuple[float, int]]] = {}
        for n, (_, chain, _) in enumerate(chains):
            meeting.setdefault(chain[side], []).append((anchor(chain[near]), n))
        for state, ends in meeting.items():
            _, y0, _, y1 = state_box(state)
            step = min(8.0, (y1 - y0) * 0.6 / max(len(ends) - 1, 1))
            for m, (_, n) in enumerate(sorted(ends)):
                ports[(n, side)] = (y0 + y1) / 2 + (m - (len(ends) - 1) / 2) * step
    for n, (k, chain, back) in enumerate(chains):
        e = edges[k]
        colour, width, dash = _edge_look(e)
        points: list[tuple[float, float]] = []
        for spot, i in enumerate(chain):
            c = boxes[i].column
            y = anchor(i)
            if spot in (0, len(chain) - 1):
                y = ports[(n, 0 if spot == 0 else -1)]
            if boxes[i].state is not None:
                x0, _, x1, _ = state_box(i)
                inner = (x0, x1)
            else:
                inner = (lefts[c], lefts[c] + widths[c])
            points += [(inner[0], y), (inner[1], y)]
        points = points[1:-1]  # from the right side of the left state to the left of the right
        path = f"M{points[0][0]:.1f},{points[0][1]:.1f}"
        for p, (here, there) in enumerate(itertools.pairwise(points)):
            if p % 2 == 0:  # between columns: a curve
                mid = (here[0] + there[0]) / 2
                path += (
                    f" C{mid:.1f},{here[1]:.1f} {mid:.1f},{there[1]:.1f}"
                    f" {there[0]:.1f},{there[1]:.1f}"
                )
            else:  # across a column
                path += f" L{there[0]:.1f},{there[1]:.1f}"
        out.append(
            f'<g class="edge"><path d="{path}" fill="none" stroke="{colour}"'
            f' stroke-width="{width}"{dash}/>'
        )
        tip = points[0] if back else points[-1]
        out.append(_arrow(tip, -1 if back else 1, colour))
        for i in chain:
            if boxes[i].label == k:
                cx = centre_x(i)
                y = top + boxes[i].y - boxes[i].height / 2 + 6
                out.append(_label(e, cx, y, colour))
                w, h = _label_size(e)
                rects.append(("label", e.trigger, (cx - w / 2, y, cx + w / 2, y + h)))
        out.append("</g>")
    for s, ks in loops.items():
        x0, y0, x1, _ = state_box(s)
        cx = (x0 + x1) / 2
        for n, k in enumerate(ks):
            e = edges[k]
            colour, width, dash = _edge_look(e)
            rise = 10 + 10 * n
            a, b = cx - 14 - 6 * n, cx + 14 + 6 * n
            _, h = _label_size(e)
            label_y = y0 - 10 - 10 * len(ks) - sum(_label_size(edges[j])[1] + 2 for j in ks[n:])
            out.append(
                f'<g class="edge"><path d="M{a:.1f},{y0:.1f} C{a:.1f},{y0 - rise:.1f}'
                f' {b:.1f},{y0 - rise:.1f} {b:.1f},{y0:.1f}" fill="none" stroke="{colour}"'
                f' stroke-width="{width}"{dash}/>{_arrow_down((b, y0), colour)}'
                f"{_label(e, cx, label_y, colour)}</g>"
            )
            w = _label_size(e)[0]
            rects.append(("label", e.trigger, (cx - w / 2, label_y, cx + w / 2, label_y + h)))
    for i, box in enumerate(boxes):
        if box.state is not None:
            out.append(_node(graph, box.state, state_box(i)))
            rects.append(("state", graph.nodes[box.state].name, state_box(i)))
    out.append("</svg>")
    return "\n".join(out) + "\n", rects


def _edge_look(e: Edge) -> tuple[str, str, str]:
    colour = _RED if e.failed else _BLUE if e.taken else _GREY
    width = "2.5" if e.failed or e.taken else "1.2"
    dashed = e.on_error or e.timeout is not None or not e.in_table
    return colour, width, ' stroke-dasharray="5,3"' if dashed else ""


def _arrow(tip: tuple[float, float], direction: int, colour: str) -> str:
    x, y = tip
    back = x - 8 * direction
    return (
        f'<polygon points="{x:.1f},{y:.1f} {back:.1f},{y - 4:.1f} {back:.1f},{y + 4:.1f}"'
        f' fill="{colour}"/>'
    )


def _arrow_down(tip: tuple[float, float], colour: str) -> str:
    x, y = tip
    return (
        f'<polygon points="{x:.1f},{y:.1f} {x - 4:.1f},{y - 7:.1f} {x + 4:.1f},{y - 7:.1f}"'
        f' fill="{colour}"/>'
    )


def _label(e: Edge, cx: float, y: float, colour: str) -> str:
    esc = html.escape
    ink = colour if e.taken or e.failed else _INK
    weight = ' font-weight="bold"' if e.taken or e.failed else ""
    spans = "".join(
        f'<tspan x="{cx:.1f}" dy="{_LABEL_PX * (_LINE if n else 1):.1f}">{esc(line)}</tspan>'
        for n, line in enumerate(e.lines)
    )
    return (
        f'<text x="{cx:.1f}" y="{y:.1f}" text-anchor="middle" font-size="{_LABEL_PX}"'
        f' fill="{ink}"{weight}>{spans}</text>'
    )


def _node(graph: Graph, i: int, box: tuple[float, float, float, float]) -> str:
    esc = html.escape
    n = graph.nodes[i]
    x0, y0, x1, y1 = box
    fill, stroke = _FILL[n.kind]
    if not n.kind:
        fill = _VISITED if n.visited else fill
    width = "1.2"
    if n.current:
        stroke, width = _BLUE, "3"
    dash = ' stroke-dasharray="5,3"' if n.kind == "waiting" else ""
    parts = [
        f'<g class="node"><title>{esc(n.name)}</title><rect x="{x0:.1f}" y="{y0:.1f}"'
        f' width="{x1 - x0:.1f}" height="{y1 - y0:.1f}" rx="8" fill="{fill}" stroke="{stroke}"'
        f' stroke-width="{width}"{dash}/>'
    ]
    if n.kind == "final":
        parts.append(
            f'<rect x="{x0 + 3:.1f}" y="{y0 + 3:.1f}" width="{x1 - x0 - 6:.1f}"'
            f' height="{y1 - y0 - 6:.1f}" rx="6" fill="none" stroke="{stroke}"/>'
        )
    cx = (x0 + x1) / 2
    name_y = y0 + 7 + _NAME_PX
    parts.append(
        f'<text x="{cx:.1f}" y="{name_y:.1f}" text-anchor="middle" font-size="{_NAME_PX}"'
        f' fill="#111827">{esc(n.name)}</text>'
    )
    if n.note:
        parts.append(
            f'<text x="{cx:.1f}" y="{name_y + _NOTE_PX * _LINE + 1:.1f}" text-anchor="middle"'
            f' font-size="{_NOTE_PX}" fill="{_FILL[n.kind][1]}">{esc(n.note)}</text>'
        )
    parts.append("</g>")
    return "".join(parts)
