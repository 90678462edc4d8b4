"""The agents page: each known agent's graph and version, with its runs counted per state.

Counting reads the agent's newest runs a page at a time, up to `COUNT_LIMIT` (stores keep no
counters per state, and a page view must not scan 100,000 runs); the page says when it
stopped short.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

from statemachine import Machine
from storage import Store, cursor_of

from .._report import drawn_svg
from ._html import esc, query

__all__ = ["COUNT_LIMIT", "agents_body"]

COUNT_LIMIT = 2_000
_DRAWN: dict[tuple[str, int], str] = {}


async def count_states(
    store: Store, agent: str, limit: int = COUNT_LIMIT
) -> tuple[Counter[str], bool]:
    """Runs of `agent` per (state, status) among its newest `limit`; and whether there are more."""
    counts: Counter[str] = Counter()
    before: tuple[float, str] = (math.inf, "")
    seen = 0
    while seen < limit:
        want = min(500, limit - seen)
        batch = await store.list_runs(agent=agent, before=before, limit=want)
        counts.update(run.state for run in batch)
        seen += len(batch)
        if len(batch) < want:
            return counts, False
        before = cursor_of(batch[-1])
    more = bool(await store.list_runs(agent=agent, before=before, limit=1))
    return counts, more


def _picture(machine: Machine[Any]) -> str:
    key = (machine.name, machine.version)
    if key not in _DRAWN:
        _DRAWN[key] = drawn_svg(machine.graph())  # as the report draws it
    return _DRAWN[key]


async def agents_body(store: Store, agents: list[tuple[str, Machine[Any] | None]]) -> str:
    cards = []
    for name, machine in agents:
        counts, more = await count_states(store, name)
        states = list(machine.states) if machine is not None else []
        states += sorted(s for s in counts if s not in states)
        rows = "".join(
            f'<tr><td><a href="/{query(agent=name, state=s)}">{esc(s)}</a></td>'
            f'<td class="num">{counts.get(s, 0)}</td></tr>'
            for s in states
        )
        total = sum(counts.values())
        counted = (
            f"counted over the newest {total} runs (there are more)" if more else f"{total} runs"
        )
        title = f"{esc(name)} v{machine.version}" if machine is not None else esc(name)
        picture = (
            _picture(machine)
            if machine is not None
            else '<p class="muted">not loaded (give it with --agents MODULE:AGENT)</p>'
        )
        cards.append(
            f'<section class="agent"><h2><a href="/{query(agent=name)}">{title}</a></h2>'
            f'<div class="split"><figure class="graph">{picture}</figure>'
            f"<div><table><thead><tr><th>state</th><th>runs</th></tr></thead><tbody>{rows}"
            f'</tbody></table><p class="muted">{esc(counted)}</p></div></div></section>'
        )
    if not cards:
        cards.append('<section><p class="muted">No agents known: pass --agents.</p></section>')
    return "<h1>Agents</h1>" + "".join(cards)
