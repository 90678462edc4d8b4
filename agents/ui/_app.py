"""The web app: routes, and the token and CSRF rules applied to each (`_security`).

    GET  /                                   runs, filtered and paged
    GET  /agents                             agents, their graphs and run counts per state
    GET  /runs/{run_id}                      one run (?at=SEQ: memory at that seq)
    GET  /runs/{run_id}/stream               Server-Sent Events: the run's commits and live items
    GET  /runs/{run_id}/act/{action}         an action's form
    POST /runs/{run_id}/act/{action}/preview what the action will do (writes nothing)
    POST /runs/{run_id}/act/{action}/do      do it
    GET  /static/...                         the stylesheet and the live-update script

GET never writes. Every POST needs the token, this browser's CSRF token and an Origin of
this server.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from statemachine import Machine
from statemachine.engine import offset_key
from storage import RunRecord, Store

from ..spending._budget import limits_line, run_limits
from ..spending._usage_text import usage_line
from ._actions import (
    ACTIONS,
    ActionProblem,
    Context,
    DriveMode,
    Driver,
    Offer,
    form_fields,
    offers,
)
from ._actions import perform as perform_action
from ._actions import plan as plan_action
from ._agents_page import agents_body
from ._html import esc, message_page, page
from ._live import changes, resume_offset, sse
from ._registry import Registry
from ._run_page import run_body
from ._runs_page import Filters, list_page, parse_cursor, runs_body
from ._security import Guard, csrf_ok, csrf_token, remember_csrf

__all__ = ["create_app"]

Endpoint = Callable[[Request], Awaitable[Response]]


def create_app(
    store: Store,
    *,
    agents: Registry | Iterable[Machine[Any]] = (),
    token: str | None = None,
    loopback: bool = True,
    drive: DriveMode = "here",
) -> Starlette:
    """The UI of `store`'s runs, knowing `agents` (their graphs and actions).

    `token`: needed to act (and, unless the server is on loopback without one, to read);
    made at random when None (`app.state.guard.token`). `drive`: after send and retry,
    drive the run on in this process ("here", as the CLI does) or queue it ("queue")."""
    registry = agents if isinstance(agents, Registry) else Registry(store, agents)
    guard = Guard.make(token, loopback=loopback)
    ui = _Pages(store, registry, guard, Driver(drive))
    static = Path(__file__).parent / "static"
    routes = [
        Route("/", ui.guarded(ui.runs)),
        Route("/agents", ui.guarded(ui.agents)),
        Route("/runs/{run_id}", ui.guarded(ui.run)),
        Route("/runs/{run_id}/stream", ui.guarded(ui.stream)),
        Route("/runs/{run_id}/act/{action}", ui.guarded(ui.action_form)),
        Route(
            "/runs/{run_id}/act/{action}/{step}",
            ui.guarded(ui.action_post, write=True),
            methods=["POST"],
        ),
        Mount("/static", StaticFiles(directory=static), name="static"),
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: _http_error})
    app.state.guard = guard
    app.state.driver = ui.driver
    return app


async def _http_error(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    title = {404: "Not found", 405: "Method not allowed"}.get(status, "Error")
    detail = exc.detail if isinstance(exc, HTTPException) else "error"
    text = f"nothing here at {request.url.path}" if status == 404 else str(detail)
    return HTMLResponse(message_page(title, text), status_code=status)


class _Pages:
    def __init__(self, store: Store, registry: Registry, guard: Guard, driver: Driver) -> None:
        self.store = store
        self.registry = registry
        self.guard = guard
        self.driver = driver

    def guarded(self, endpoint: Endpoint, *, write: bool = False) -> Endpoint:
        async def checked(request: Request) -> Response:
            refused = self.guard.refuse(request, write=write)
            if refused is not None:
                return refused
            response = await endpoint(request)
            remember_csrf(request, response)
            response.headers.setdefault("Content-Security-Policy", _CSP)
            response.headers.setdefault("X-Frame-Options", "DENY")
            response.headers.setdefault("Referrer-Policy", "same-origin")
            return response

        return checked

    def _page(self, request: Request, title: str, body: str, **kw: Any) -> str:
        writable = self.guard.has_token(request)
        return page(title, body, writable=writable, **kw)

    async def runs(self, request: Request) -> Response:
        filters, problems = Filters.parse(request.query_params)
        before = (math.inf, "")
        if request.query_params.get("before"):
            cursor = parse_cursor(request.query_params["before"])
            if cursor is None:
                problems.append("the page cursor is not one this server made: from the top")
            else:
                before = cursor
        view = await list_page(self.store, filters, before)
        body = runs_body(
            view, filters, problems, self.registry.names(), first=before[0] == math.inf
        )
        return HTMLResponse(self._page(request, "runs", body), status_code=200)

    async def agents(self, request: Request) -> Response:
        known = [(name, self.registry.get(name)) for name in self.registry.names()]
        body = await agents_body(self.store, known)
        return HTMLResponse(self._page(request, "agents", body))

    async def _record(self, request: Request) -> RunRecord:
        run_id = request.path_params["run_id"]
        record = await self.store.load(run_id)
        if record is None:
            raise HTTPException(404, f"no run {run_id!r} in this store")
        return record

    async def _context(self, request: Request) -> Context:
        record = await self._record(request)
        events = await self.store.history(record.run_id)
        return Context(self.store, record, self.registry.get(record.agent), events)

    async def run(self, request: Request) -> Response:
        try:
            ctx = await self._context(request)
        except HTTPException as exc:
            return HTMLResponse(message_page("Run not found", str(exc.detail)), status_code=404)
        at_text = request.query_params.get("at", "")
        at: int | None = None
        if at_text:
            at = _seq(at_text)
            if at is None or at > ctx.record.seq:
                return self._bad_query(
                    request, f"?at= takes a seq of this run, 0 to {ctx.record.seq}", ctx
                )
        limits = await run_limits(self.store, ctx.machine, ctx.record.run_id)
        spending = f"usage {usage_line(ctx.record.usage)}" + (
            f"; limits {limits_line(limits)}" if limits else ""
        )
        offered = await offers(ctx)
        body = run_body(
            ctx.machine, ctx.record, ctx.events, offered, at,
            notice=_notice(request.query_params.get("did", "")), spending=spending,
            waiting=self._waiting(request, ctx, offered),
        )  # fmt: skip
        stream = f"/runs/{quote(ctx.record.run_id)}/stream?after={ctx.record.seq}"
        title = f"run {ctx.record.run_id}"
        return HTMLResponse(self._page(request, title, body, live=stream))

    async def stream(self, request: Request) -> Response:
        record = await self._record(request)
        last = request.headers.get("last-event-id") or request.query_params.get("after", "")
        try:
            start = resume_offset(last, record.seq)
        except ValueError as exc:
            return PlainTextResponse(
                f"{exc}: give ?after= (or Last-Event-ID) an offset of this stream, or none",
                status_code=400,
            )
        items = changes(self.store, record.run_id, start)
        return StreamingResponse(
            sse(items),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def action_form(self, request: Request, problem: str = "", status: int = 200,
                          values: Mapping[str, str] | None = None) -> Response:  # fmt: skip
        action = request.path_params["action"]
        if action not in ACTIONS:
            raise HTTPException(404, f"no action {action!r}")
        ctx = await self._context(request)
        values = values if values is not None else dict(request.query_params)
        try:
            inputs = form_fields(action, ctx, values)
        except ActionProblem as exc:
            return self._refused(request, ctx, str(exc), 409)
        note = f'<p class="problem" id="problem">{esc(problem)}</p>' if problem else ""
        body = (
            f'<section><h1>{esc(action)}: run <a href="/runs/{esc(ctx.record.run_id)}">'
            f"{esc(ctx.record.run_id)}</a></h1>{note}"
            f'<form method="post" class="action" action="/runs/{esc(ctx.record.run_id)}/act/'
            f'{esc(action)}/preview">{self._hidden(request, ctx)}{inputs}'
            '<button type="submit" id="review">review what it will do</button></form></section>'
        )
        return HTMLResponse(self._page(request, action, body), status_code=status)

    def _waiting(self, request: Request, ctx: Context, offered: list[Offer]) -> str:
        """For a waiting run: a banner saying what it waits for, with the form that gives it."""
        if ctx.record.status != "waiting":
            return ""
        forms = []
        for o in offered:
            if o.action not in ("send", "approve"):
                continue
            what = (
                f"the event <b>{esc(o.params['event'])}</b>"
                if o.action == "send"
                else f"approval of the tool call <code>{esc(o.params['call'])}</code>"
            )
            try:
                inputs = form_fields(o.action, ctx, o.params)
            except ActionProblem as exc:
                forms.append(f'<h2>Waiting for {what}</h2><p class="problem">{esc(exc)}</p>')
                continue
            forms.append(
                f"<h2>Waiting for {what}</h2>"
                f'<form method="post" class="action" action="/runs/{esc(ctx.record.run_id)}/act/'
                f'{esc(o.action)}/preview">{self._hidden(request, ctx)}{inputs}'
                '<button type="submit">review what it will do</button></form>'
            )
        if not forms:
            forms.append(
                f"<h2>Waiting in state <b>{esc(ctx.record.state)}</b></h2><p>The agent"
                f" <code>{esc(ctx.record.agent)}</code> is not known to this server, so it cannot"
                " say for what: start it with <code>--agents MODULE:AGENT</code>.</p>"
            )
        return f'<section class="waiting" id="waiting">{"".join(forms)}</section>'

    def _hidden(self, request: Request, ctx: Context) -> str:
        return (
            f'<input type="hidden" name="csrf" value="{esc(csrf_token(request))}">'
            f'<input type="hidden" name="seq" value="{ctx.record.seq}">'
        )

    def _bad_query(self, request: Request, why: str, ctx: Context) -> Response:
        body = (
            f'<section><h1>Bad request</h1><p class="problem" id="problem">{esc(why)}</p>'
            f'<p><a href="/runs/{esc(ctx.record.run_id)}">the run as it is now</a></p></section>'
        )
        return HTMLResponse(self._page(request, "bad request", body), status_code=400)

    def _refused(self, request: Request, ctx: Context, why: str, status: int) -> Response:
        body = (
            f'<section><h1>Cannot do that</h1><p class="problem" id="problem">{esc(why)}</p>'
            f'<p><a href="/runs/{esc(ctx.record.run_id)}">back to the run</a></p></section>'
        )
        return HTMLResponse(self._page(request, "refused", body), status_code=status)

    async def action_post(self, request: Request) -> Response:
        action, step = request.path_params["action"], request.path_params["step"]
        if action not in ACTIONS or step not in ("preview", "do"):
            raise HTTPException(404, f"no action {action!r}/{step!r}")
        form = await request.form()
        values = {k: v for k, v in form.multi_items() if isinstance(v, str)}
        if not csrf_ok(request, values.get("csrf", "")):
            return HTMLResponse(
                message_page("Forbidden", "the form's CSRF token is missing or stale: reload"
                             " the run page and try again"),
                status_code=403,
            )  # fmt: skip
        ctx = await self._context(request)
        try:
            if step == "preview":
                plan = await plan_action(action, ctx, values, self.driver)
            else:
                target = await perform_action(action, ctx, values, self.driver)
                return RedirectResponse(f"{quote(target)}?did={action}", 303)
        except ActionProblem as exc:
            return await self.action_form(request, str(exc), 422, values)
        kept = "".join(
            f'<input type="hidden" name="{esc(k)}" value="{esc(v)}">'
            for k, v in values.items()
            if k not in ("csrf", "seq")
        )
        effects = "".join(f"<li>{esc(e)}</li>" for e in plan.effects)
        body = (
            f'<section><h1>{esc(plan.title)}</h1><p>This will:</p><ul id="effects">{effects}</ul>'
            f'<p class="muted">The same as: <code>{esc(plan.cli)}</code></p>'
            f'<form method="post" action="/runs/{esc(ctx.record.run_id)}/act/{esc(action)}/do">'
            f'{self._hidden(request, ctx)}{kept}<button type="submit" id="confirm">do it</button>'
            f' <a href="/runs/{esc(ctx.record.run_id)}">cancel, back to the run</a></form>'
            "</section>"
        )
        return HTMLResponse(self._page(request, plan.title, body))


def _seq(text: str) -> int | None:
    """A seq from a query, by the rule of watch offsets (`offset_key`); else None."""
    try:
        seq, live, _ = offset_key(text)
    except ValueError:
        return None
    return seq if not live else None


def _notice(did: str) -> str:
    """The line a run page shows after an action (only ours: a link cannot put words there)."""
    return f"{did}: done" if did in ACTIONS else ""


_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self'"
    " data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
"""Scripts only from this server (no inline script at all), styles inline (the report's)."""
