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
5. SVG (`_layout_svg`): inside a column every edge runs straight across its own box; between
   columns it is a curve. A self-loop is an arc over its state, its label above.

Text widths are estimated (no font metrics in Python): a generous width per character.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from ._graph_parts import Edge, Node

__all__ = ["Box", "Chain", "Graph", "Placement", "Rect", "label_size", "place", "text_width"]


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
class Box:
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


def text_width(text: str, px: float) -> float:
    return len(text) * px * _CHAR


Chain = tuple[int, list[int], bool]
"""An edge's chain of boxes: (edge, boxes left to right, drawn back)."""
Placement = tuple[list[Edge], list["Box"], list[list[int]], list[Chain], dict[int, list[int]]]
"""What `place` found: the edges drawn, the boxes, the columns (box indexes, top to bottom),
each edge's chain of boxes (edge, boxes left to right, drawn back), each state's self-loops."""


def place(graph: Graph) -> Placement:
    """Steps 1-4: the boxes of `graph`'s states, labels and bend points, in columns."""
    names = [n.name for n in graph.nodes]
    index = {name: i for i, name in enumerate(names)}
    edges = [e for e in graph.edges if e.source in index and e.dest in index]
    rank = _ranks(len(names), [(index[e.source], index[e.dest]) for e in edges])
    boxes: list[Box] = []
    for i, n in enumerate(graph.nodes):
        width = max(text_width(n.name, _NAME_PX), text_width(n.note, _NOTE_PX)) + 28
        height = _NAME_PX * _LINE + (_NOTE_PX * _LINE if n.note else 0) + 14
        boxes.append(Box(column=2 * rank[i], width=width, height=height, state=i))
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
                w, h = label_size(e)
                boxes.append(Box(column=column, width=w, height=h + 6, label=k))
            else:
                boxes.append(Box(column=column, width=0.0, height=4.0))
            chain.append(len(boxes) - 1)
        chain.append(right)
        for a, b in itertools.pairwise(chain):
            boxes[a].downs.append(b)
            boxes[b].ups.append(a)
        chains.append((k, chain, back))
    for s, ks in loops.items():  # room over the state for its loops and their labels
        sizes = [label_size(edges[k]) for k in ks]
        box = boxes[s]
        box.width = max(box.width, *(w for w, _ in sizes))
        box.top = sum(h + 2 for _, h in sizes) + 10 * len(ks) + 8
        box.height += box.top
    columns = _order(boxes)
    _heights(boxes, columns)
    return edges, boxes, columns, chains, loops


def label_size(e: Edge) -> tuple[float, float]:
    lines = e.lines
    return max(text_width(line, _LABEL_PX) for line in lines) + 8, len(lines) * _LABEL_PX * _LINE


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


def _order(boxes: list[Box]) -> list[list[int]]:
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


def _crossings(boxes: list[Box], columns: list[list[int]]) -> int:
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


def _heights(boxes: list[Box], columns: list[list[int]]) -> None:
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


def _spread(boxes: list[Box], column: list[int], wanted: list[float]) -> list[float]:
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
