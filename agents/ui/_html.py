"""The pages' frame: layout, navigation, escaping helpers and the few shared fragments.

Every value that comes from a run, a store or a request goes through `esc` (or `attr`) on
its way into a page; nothing is inserted raw.
"""

from __future__ import annotations

import html
import json
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from .._report import _CSS as REPORT_CSS

__all__ = ["attr", "esc", "message_page", "page", "query", "status_badge", "when"]


def esc(value: object) -> str:
    """`value` as text safe anywhere in HTML text or a quoted attribute."""
    return html.escape(str(value), quote=True)


attr = esc


def query(**params: object) -> str:
    """`?a=1&b=2` of the parameters that are not None or "" (escaped for an href)."""
    kept = {k: str(v) for k, v in params.items() if v is not None and v != ""}
    return esc("?" + urlencode(kept)) if kept else "?"


def when(ts: float | None) -> str:
    if not ts:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


def status_badge(status: str) -> str:
    return f'<span class="status {esc(status)}">{esc(status)}</span>'


def pretty(value: Any) -> str:
    return esc(json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False))


def page(title: str, body: str, *, live: str | None = None, writable: bool = True) -> str:
    """A whole page. `live`: the URL of the page's event stream (the script then reloads the
    page's `<main>` when the run moves, and shows streamed model text and steps in the "live
    output" box); without JavaScript the page reads the same."""
    script = (
        f'<script src="/static/live.js" data-stream="{esc(live)}" defer></script>' if live else ""
    )
    output = (
        '<section class="output" id="output" hidden><h2>live output</h2></section>' if live else ""
    )  # outside <main>: it outlives the refresh at each commit
    readonly = (
        ""
        if writable
        else '<p class="note">Read only: open the URL the server printed (with its token) to'
        " act on runs.</p>"
    )
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)} · agentfsm</title>"
        '<link rel="stylesheet" href="/static/ui.css">'
        f"<style>{REPORT_CSS}</style>{script}</head><body>"
        '<nav class="top"><b>agentfsm</b> <a href="/">runs</a> <a href="/agents">agents</a>'
        '<span id="live" class="live"></span></nav>'
        f'{output}<main id="main">{readonly}{body}</main></body></html>'
    )


def message_page(title: str, message: str, *, back: str = "/") -> str:
    """A page that says one thing (not found, refused, error): `message` is escaped."""
    return page(
        title,
        f'<section><h1>{esc(title)}</h1><p class="problem">{esc(message)}</p>'
        f'<p><a href="{esc(back)}">back</a></p></section>',
    )
