"""Who may read and who may act: the token, the CSRF rules and the Host check.

- The server always has a token (given with `--token`, else made at start and printed in the
  URL). Visiting any page with `?token=...` stores it in an HttpOnly, SameSite=Strict cookie
  and redirects to the same page without it (so it stays out of history and Referer headers).
- Reading: open on a loopback server started without `--token` (the Host header must then
  name the loopback, which defeats DNS rebinding); otherwise the token is needed.
- Acting (every state change is a POST; GET never writes): the token, a CSRF token equal to
  the per-browser one in the `agentfsm_csrf` cookie (double submit), and an Origin (or, if a
  browser sends none, a Referer) of this very server.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from ._html import message_page

__all__ = ["CSRF_COOKIE", "TOKEN_COOKIE", "Guard", "csrf_ok", "csrf_token", "remember_csrf"]

TOKEN_COOKIE = "agentfsm_token"
CSRF_COOKIE = "agentfsm_csrf"
_LOOPBACK_NAMES = {"127.0.0.1", "localhost", "[::1]", "::1"}


@dataclass(frozen=True, slots=True)
class Guard:
    token: str
    open_reads: bool
    """Reading needs no token (a loopback server started without `--token`)."""

    @classmethod
    def make(cls, token: str | None, *, loopback: bool) -> Guard:
        return cls(token=token or secrets.token_urlsafe(24), open_reads=loopback and not token)

    def has_token(self, request: Request) -> bool:
        given = request.cookies.get(TOKEN_COOKIE, "")
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        return bool(given) and hmac.compare_digest(given.encode(), self.token.encode())

    def refuse(self, request: Request, *, write: bool) -> Response | None:
        """The response that refuses `request`, or None when it may go on."""
        given = request.query_params.get("token")
        if given is not None and request.method == "GET":
            return self._take_token(request, given)
        if self.open_reads and _host_name(request) not in _LOOPBACK_NAMES:
            return _refusal(403, "Forbidden", "this server answers loopback names only")
        if not write:
            if self.open_reads or self.has_token(request):
                return None
            return _refusal(401, "Token needed", _TOKEN_HELP)
        if not self.has_token(request):
            return _refusal(401, "Token needed", "acting on runs needs the token. " + _TOKEN_HELP)
        if not _same_origin(request):
            return _refusal(403, "Forbidden", "the request does not come from this server's pages")
        return None

    def _take_token(self, request: Request, given: str) -> Response:
        if not hmac.compare_digest(given.encode(), self.token.encode()):
            return _refusal(401, "Wrong token", _TOKEN_HELP)
        rest = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
        target = request.url.path + ("?" + urlencode(rest) if rest else "")
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(TOKEN_COOKIE, self.token, httponly=True, samesite="strict")
        return response


def csrf_token(request: Request) -> str:
    """This browser's CSRF token (made on its first page; `remember_csrf` stores it)."""
    known = request.cookies.get(CSRF_COOKIE)
    if known and len(known) >= 20:
        return known
    made: str = getattr(request.state, "csrf", "") or secrets.token_urlsafe(24)
    request.state.csrf = made
    return made


def remember_csrf(request: Request, response: Response) -> None:
    made = getattr(request.state, "csrf", "")
    if made:
        response.set_cookie(CSRF_COOKIE, made, httponly=True, samesite="strict")


def csrf_ok(request: Request, sent: str) -> bool:
    known = request.cookies.get(CSRF_COOKIE, "")
    return bool(known) and bool(sent) and hmac.compare_digest(sent.encode(), known.encode())


_TOKEN_HELP = "open the URL `agentfsm ui` printed (it ends with ?token=...)"


def _refusal(status: int, title: str, message: str) -> Response:
    return HTMLResponse(message_page(title, message), status_code=status)


def _host_name(request: Request) -> str:
    host = request.headers.get("host", "")
    if host.startswith("["):
        return host[: host.find("]") + 1]
    return host.rsplit(":", 1)[0] if ":" in host else host


def _same_origin(request: Request) -> bool:
    here = f"{request.url.scheme}://{request.headers.get('host', '')}"
    origin = request.headers.get("origin")
    if origin is not None:
        return origin == here
    referer = request.headers.get("referer", "")
    return referer == here or referer.startswith(here + "/")
