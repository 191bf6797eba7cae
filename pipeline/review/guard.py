"""Who may talk to the review server: loopback or token, Host check, security headers, a log without identifiers.

- bound to a loopback address (the default) no token is needed; bound to any other address a
  token is (``--token``, env ``CRAV_QA_TOKEN``, or a generated one), given once as ``?token=``
  and then kept in an HttpOnly, SameSite=Strict cookie named after the port; without it: 403;
- the Host header must name the bound host, so that a page of another site resolving to this
  address (DNS rebinding) gets 400; bound to a wildcard address (``0.0.0.0``, ``::``) any Host is
  accepted, the token being required there;
- every response carries a strict Content-Security-Policy (scripts from the server only) and
  anti-framing / no-sniff / no-referrer headers;
- the request log names no patient: paths under ``/lesion/`` and ``/img/`` are redacted.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import re
import secrets
import socket
from collections.abc import Mapping
from urllib.parse import parse_qsl, urlencode

from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["TOKEN_ENV", "Guard", "allowed_hosts", "is_loopback", "is_wildcard", "resolve_token"]

log = logging.getLogger("pipeline.review.server")  # the request log of the server

TOKEN_ENV = "CRAV_QA_TOKEN"
_TOKEN_CHARS = re.compile(r"^[A-Za-z0-9._~-]{16,200}$")
_LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
_SECURITY_HEADERS = [
    (b"content-security-policy", b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                                 b"connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-cache"),
]


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ``::1``)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def is_wildcard(host: str) -> bool:
    return host.strip("[]") in ("0.0.0.0", "::", "")


def resolve_token(host: str, token: str | None, environ: Mapping[str, str] | None = None) -> str | None:
    """The access token in force: ``token`` when given; bound off loopback, ``CRAV_QA_TOKEN`` or a new one.

    Returns None (no token) on a loopback address when none is given.

    Raises
    ------
    ValueError
        If a given token is shorter than 16 characters or holds characters other than letters,
        digits and ``._~-``.
    """
    env = os.environ if environ is None else environ
    if token is None and not is_loopback(host):
        token = env.get(TOKEN_ENV) or secrets.token_urlsafe(24)
    if token is not None and not _TOKEN_CHARS.match(token):
        raise ValueError("the token must be 16 to 200 letters, digits or ._~- characters "
                         "(leave it out to have one generated)")
    return token


def allowed_hosts(host: str) -> frozenset[str] | None:
    """Host names the Host header may carry for a server bound to ``host``; None for any (wildcard)."""
    if is_wildcard(host):
        return None
    names = {host.strip("[]").lower()}
    if is_loopback(host):
        names |= _LOOPBACK_NAMES
    else:
        names |= {socket.gethostname().lower(), socket.getfqdn().lower()}
    return frozenset(names)


def _host_name(header: str) -> str:
    """``example:8765`` -> ``example``; ``[::1]:8765`` -> ``::1``."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1: header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def _redacted(path: str) -> str:
    """A request path fit for a log: identifiers after ``/lesion/`` and ``/img/`` left out."""
    for prefix in ("/lesion/", "/img/"):
        if path.startswith(prefix):
            return prefix + "..."
    return path


class Guard:
    """ASGI middleware: Host check, token, security headers, redacted request log."""

    def __init__(self, app: ASGIApp, hosts: frozenset[str] | None, token: str | None, cookie: str) -> None:
        self.app, self.hosts, self.token, self.cookie = app, hosts, token, cookie

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        status: list[int] = [0]

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message["headers"] = list(message.get("headers", [])) + _SECURITY_HEADERS
            await send(message)

        response = self._refusal(request)
        if response is not None:
            await response(scope, receive, send_with_headers)
        else:
            await self.app(scope, receive, send_with_headers)
        log.info("%s %s %d", request.method, _redacted(request.url.path), status[0])

    def _refusal(self, request: Request) -> Response | None:
        if self.hosts is not None and _host_name(request.headers.get("host", "")) not in self.hosts:
            return PlainTextResponse("This server answers only to the host name it was started on "
                                     "(the URL printed by crav qa).", status_code=400)
        if self.token is None:
            return None
        if hmac.compare_digest(request.cookies.get(self.cookie, "").encode(), self.token.encode()):
            return None
        given = request.query_params.get("token")
        if given is not None and hmac.compare_digest(given.encode(), self.token.encode()):
            rest = urlencode([(k, v) for k, v in parse_qsl(request.url.query) if k != "token"])
            response = RedirectResponse(request.url.path + (f"?{rest}" if rest else ""), status_code=303)
            response.set_cookie(self.cookie, self.token, httponly=True, samesite="strict", path="/")
            return response
        return PlainTextResponse("Access refused: open the URL with ?token=... that crav qa printed when it "
                                 "started.", status_code=403)
