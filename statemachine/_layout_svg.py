"""Step 5 of the Python layout (`_layout`): the placed boxes drawn as an SVG document."""

from __future__ import annotations

import html
import itertools

from ._graph_parts import Edge
from ._layout import (
    _BLUE,
    _FILL,
    _FONT,
    _GREY,
    _INK,
    _LABEL_PX,
    _LINE,
    _NAME_PX,
    _NOTE_PX,
    _PAD,
    _RED,
    _TITLE_PX,
    _VISITED,
    Box,
    Graph,
    Rect,
    label_size,
    place,
    text_width,
)

__all__ = ["layered_svg", "placed"]


def layered_svg(graph: Graph) -> str:
    """`graph` as an SVG document, laid out here (nothing installed needed)."""
    return _svg(graph, *place(graph))[0]


def placed(graph: Graph) -> list[tuple[str, str, Rect]]:
    """Where `layered_svg` puts things: ("state", name, rect) and ("label", trigger, rect)."""
    return _svg(graph, *place(graph))[1]


def _svg(
    graph: Graph,
    edges: list[Edge],
    boxes: list[Box],
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
    total_w = max(x + _PAD, text_width(graph.title, _TITLE_PX) + 2 * _PAD)
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
                w, h = label_size(e)
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
            _, h = label_size(e)
            label_y = y0 - 10 - 10 * len(ks) - sum(label_size(edges[j])[1] + 2 for j in ks[n:])
            out.append(
                f'<g class="edge"><path d="M{a:.1f},{y0:.1f} C{a:.1f},{y0 - rise:.1f}'
                f' {b:.1f},{y0 - rise:.1f} {b:.1f},{y0:.1f}" fill="none" stroke="{colour}"'
                f' stroke-width="{width}"{dash}/>{_arrow_down((b, y0), colour)}'
                f"{_label(e, cx, label_y, colour)}</g>"
            )
            w = label_size(e)[0]
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
