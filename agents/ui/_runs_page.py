"""The runs page: every run of the store, filtered, a page at a time over the store's indexes.

Paging is keyset paging (`Store.list_runs(before=...)`): each page starts below the last run
of the page before, so page 1,000 costs what page 1 does. The text filter (part of a run id)
has no index to use: the store checks it on the ids of its creation-time index, reading a
run only when its id matches.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, get_args

from storage import RunRecord, RunStatus, Store, cursor_of

from ..spending._usage_text import usage_line
from ._html import esc, query, status_badge, when

__all__ = ["Filters", "RunsView", "list_page", "runs_body"]

PAGE = 50
MAX_PAGE = 500
STATUSES: tuple[str, ...] = get_args(RunStatus)


@dataclass(frozen=True, slots=True)
class Filters:
    agent: str = ""
    status: str = ""
    state: str = ""
    since: str = ""
    until: str = ""
    text: str = ""
    limit: int = PAGE

    @classmethod
    def parse(cls, params: Mapping[str, str]) -> tuple[Filters, list[str]]:
        """The filters of a query string, and what was wrong with it (those parts ignored)."""
        problems: list[str] = []
        status = params.get("status", "")
        if status and status not in STATUSES:
            problems.append(f"unknown status {status!r} (one of {', '.join(STATUSES)})")
            status = ""
        limit = PAGE
        if params.get("limit"):
            try:
                limit = max(1, min(int(params["limit"]), MAX_PAGE))
            except ValueError:
                problems.append(f"limit {params['limit']!r} is not a number")
        times = {}
        for name in ("since", "until"):
            times[name] = params.get(name, "").strip()
            if times[name] and _seconds(times[name]) is None:
                problems.append(f"{name} {times[name]!r} is not a time (YYYY-MM-DDTHH:MM, UTC)")
                times[name] = ""
        found = cls(
            agent=params.get("agent", "").strip(), status=status,
            state=params.get("state", "").strip(), since=times["since"], until=times["until"],
            text=params.get("q", "").strip(), limit=limit,
        )  # fmt: skip
        return found, problems

    def store_query(self) -> dict[str, Any]:
        return {
            "agent": self.agent or None,
            "status": self.status or None,
            "state": self.state or None,
            "since": _seconds(self.since) if self.since else None,
            "until": _seconds(self.until) if self.until else None,
        }

    def params(self) -> dict[str, object]:
        return {
            "agent": self.agent, "status": self.status, "state": self.state,
            "since": self.since, "until": self.until, "q": self.text,
            "limit": self.limit if self.limit != PAGE else None,
        }  # fmt: skip


def _seconds(text: str) -> float | None:
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        return None
    return (at if at.tzinfo else at.replace(tzinfo=UTC)).timestamp()


def parse_cursor(text: str) -> tuple[float, str] | None:
    """`1733100000.5:run-id` (a creation time, then the run id, which may hold colons)."""
    at, sep, run_id = text.partition(":")
    try:
        seconds = float(at)
    except ValueError:
        return None
    return (seconds, run_id) if sep and not math.isnan(seconds) else None


def format_cursor(cursor: tuple[float, str]) -> str:
    return f"{cursor[0]!r}:{cursor[1]}"


@dataclass(frozen=True, slots=True)
class RunsView:
    runs: list[RunRecord]
    next: tuple[float, str] | None
    """Where the next page starts (None: this is the last one)."""


async def list_page(store: Store, filters: Filters, before: tuple[float, str]) -> RunsView:
    """One page of runs below `before` (one store call: the text filter too is the store's,
    checked on its index's ids)."""
    runs = await store.list_runs(
        **filters.store_query(), before=before, limit=filters.limit + 1,
        id_contains=filters.text or None,
    )  # fmt: skip
    more = len(runs) > filters.limit
    runs = runs[: filters.limit]
    return RunsView(runs, cursor_of(runs[-1]) if more and runs else None)


def usage_cells(run: RunRecord) -> str:
    """The usage and cost cells of a run's row, worded as the run page and the CLI word them
    (`usage_line`): "1 requests, 53 in, 7 out" and "$0.000042"; "-" for none."""
    usage = {k: v for k, v in run.usage.items() if k != "cost_nusd"}
    cost = {k: v for k, v in run.usage.items() if k == "cost_nusd"}
    return f'<td>{esc(usage_line(usage))}</td><td class="num">{esc(usage_line(cost))}</td>'


def _holder(holder: str) -> str:
    """The lease holder, short (host:pid); the whole owner id on hover."""
    if not holder:
        return "<td>-</td>"
    return f'<td title="{esc(holder)}">{esc(holder.split("@")[0])}</td>'


def runs_body(
    view: RunsView,
    filters: Filters,
    problems: Sequence[str],
    agents: Sequence[str],
    *,
    first: bool,
) -> str:
    rows = "".join(
        f'<tr><td><a href="/runs/{esc(r.run_id)}">{esc(r.run_id)}</a></td>'
        f"<td>{esc(r.agent)} v{r.version}</td><td>{esc(r.state)}</td>"
        f"<td>{status_badge(r.status)}</td>{_holder(r.holder)}"
        f'<td class="num">{r.seq}</td><td>{when(r.updated_at)}</td>'
        f"<td>{when(r.created_at)}</td>{usage_cells(r)}</tr>"
        for r in view.runs
    )
    if not rows:
        rows = '<tr><td colspan="10" class="muted">no runs match</td></tr>'
    notes = "".join(f'<p class="problem">{esc(p)}</p>' for p in problems)
    paging = []
    if not first:
        paging.append(f'<a href="/{query(**filters.params())}">first page</a>')
    if view.next is not None:
        paging.append(
            f'<a id="next" href="/{query(**filters.params(), before=format_cursor(view.next))}">'
            "next page →</a>"
        )
    return (
        f"<section><h1>Runs</h1>{_filter_form(filters, agents)}{notes}"
        '<table id="runs"><thead><tr><th>run</th><th>agent</th><th>state</th><th>status</th>'
        "<th>holder</th><th>seq</th><th>updated (UTC)</th><th>created (UTC)</th><th>usage</th>"
        "<th>cost</th>"
        f"</tr></thead><tbody>{rows}</tbody></table>"
        f'<p class="paging">{" · ".join(paging)}</p>'
        '<p class="muted">Newest created first. Filters on updated time.</p></section>'
    )


def _filter_form(f: Filters, agents: Sequence[str]) -> str:
    statuses = "".join(
        f'<option value="{esc(s)}"{" selected" if s == f.status else ""}>{esc(s or "any")}</option>'
        for s in ("", *STATUSES)
    )
    known = "".join(f'<option value="{esc(a)}"></option>' for a in agents)
    return (
        '<form class="filters" method="get" action="/">'
        f'<label>agent <input name="agent" list="agent-names" value="{esc(f.agent)}"></label>'
        f'<datalist id="agent-names">{known}</datalist>'
        f'<label>status <select name="status">{statuses}</select></label>'
        f'<label>state <input name="state" value="{esc(f.state)}"></label>'
        f'<label>updated since <input name="since" type="datetime-local" value="{esc(f.since)}">'
        f'</label><label>until <input name="until" type="datetime-local" value="{esc(f.until)}">'
        f'</label><label>run id contains <input name="q" value="{esc(f.text)}"></label>'
        '<button type="submit">filter</button></form>'
    )
