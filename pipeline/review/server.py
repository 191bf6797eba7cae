"""The QA review page of an output folder (``crav qa``): the Starlette app and the uvicorn runner.

Security, for a page that shows patient data and writes verdicts (access rules in
:mod:`pipeline.review.guard`: loopback or token, Host check, security headers, redacted log):

- a state-changing request is a JSON POST carrying the server's CSRF secret in a header (the pages
  hold it in a meta tag), from the same origin;
- templates autoescape every value, data reaches scripts only as JSON (``|tojson``), and the
  Content-Security-Policy allows scripts from the server only;
- lesions are looked up in ``lesions.csv``, never used as paths; images are served only from
  ``<output>/patients/`` and only ``.png`` files;
- nothing logged names a patient: uvicorn's access log is off, the guard logs redacted paths.
"""

from __future__ import annotations

import hmac
import json
import logging
import secrets
import signal
import socket
import sqlite3
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import jinja2
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import Scope

from pipeline.outputs.lock import OutputLockedError, output_lock
from pipeline.outputs.paths import SAFE_COMPONENT
from pipeline.review import pages
from pipeline.review.guard import Guard, allowed_hosts, is_wildcard, resolve_token
from pipeline.review.store import Corrections, ReviewStore, apply_reviews, visit_label

log = logging.getLogger(__name__)

CSRF_HEADER = "x-crav-csrf"
_MAX_BODY_BYTES = 64 * 1024
_STATIC = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8"}


@dataclass
class _QA:
    """What the routes share."""

    output_dir: Path
    store: ReviewStore
    csrf: str
    reviewer: str
    templates: jinja2.Environment
    verdict_lock: threading.Lock

    def render(self, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
        html = self.templates.get_template(name).render(csrf=self.csrf, folder=self.output_dir.name, **context)
        return HTMLResponse(html, status_code=status_code)

    def not_found(self, what: str) -> HTMLResponse:
        return self.render("error.j2", status_code=404, title="Not found", message=what)


def _templates() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("pipeline.review", "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.policies["json.dumps_kwargs"] = {"sort_keys": True, "ensure_ascii": True}
    return env


def _lesion_ids(scope: Scope) -> tuple[str, str] | None:
    """(patient_id, lesion_id) from the raw path ``/lesion/<quoted pid>/<quoted lid>`` (ids may hold ``/``)."""
    raw = scope.get("raw_path") or scope["path"].encode()
    parts = raw.decode("latin-1").split("?", 1)[0].split("/")
    if len(parts) != 4 or parts[1] != "lesion" or not parts[2] or not parts[3]:
        return None
    return unquote(parts[2], errors="strict"), unquote(parts[3], errors="strict")


def _image_path(output_dir: Path, rel: str) -> Path | None:
    """The PNG under ``<output>/patients/`` that ``rel`` names, or None (bad name, outside, not a PNG)."""
    parts = rel.split("/")
    if not parts or not all(SAFE_COMPONENT.match(p) and not p.startswith(".") for p in parts):
        return None
    if not parts[-1].endswith(".png"):
        return None
    root = (output_dir / "patients").resolve()
    try:
        path = root.joinpath(*parts).resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    if root not in path.parents or path.suffix != ".png" or not path.is_file():
        return None
    return path


def _bad(message: str, status_code: int = 400) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status_code)


def _text(payload: Mapping[str, Any], name: str, required: bool = False) -> str:
    value = payload.get(name, "")
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise ValueError(f"{name} must be text")
    if required and not value:
        raise ValueError(f"{name} is required")
    return value


def _record_verdict(qa: _QA, payload: Mapping[str, Any]) -> JSONResponse:
    """Validate, store, apply to measurements.csv (blocking: run in a worker thread)."""
    try:
        pid, lid = _text(payload, "patient_id", True), _text(payload, "lesion_id", True)
        status, comment = _text(payload, "status", True), _text(payload, "comment")
        reviewer, key = _text(payload, "reviewer"), _text(payload, "result_key", True)
        # an acceptance keeps the corrections in force: only a rejection sets them
        corrections = Corrections.from_json(payload.get("corrections")) if status == "rejected" else None
    except ValueError as exc:
        return _bad(str(exc))
    try:
        tables = pages.read_tables(qa.output_dir)
    except FileNotFoundError as exc:
        return _bad(str(exc), 503)
    row = tables.lesion(pid, lid)
    if row is None:
        return _bad("this lesion is not in lesions.csv (was the output folder re-run?)", 404)
    rows = tables.rows(pid, lid)
    labels = {visit_label(r.get("timepoint", ""), r.get("days_from_procedure")) for r in rows}
    unknown = [v for v in corrections.exclude_visits if v not in labels] if corrections else []
    if unknown:
        return _bad(f"exclude_visits: {', '.join(unknown)} is not a visit of this lesion")
    with qa.verdict_lock:
        current = pages.lesion_state(row, rows, None).result_key
        if key != current:
            return _bad("the results of this lesion changed since the page was loaded (a run finished): "
                        "reload the page and review them again", 409)
        try:
            review = qa.store.record(pid, lid, status, comment, result_key=key, reviewer=reviewer,
                                     corrections=corrections)
        except ValueError as exc:
            return _bad(str(exc))
        try:
            with output_lock(qa.output_dir):
                apply_reviews(qa.output_dir)
            message = f"{review.status.capitalize()}: stored, and shown in measurements.csv."
            applied = True
        except OutputLockedError:
            message = (f"{review.status.capitalize()}: stored. A run is writing this output folder: "
                       "measurements.csv will show the verdict when the run ends.")
            applied = False
        except (OSError, sqlite3.Error) as exc:
            log.error("verdict stored but measurements.csv not updated: %s", type(exc).__name__)
            message = (f"{review.status.capitalize()}: stored, but measurements.csv could not be updated "
                       f"({type(exc).__name__}); the next crav run will show it.")
            applied = False
    return JSONResponse({"status": review.status, "applied": applied, "message": message,
                         "review": review.to_json()})


def create_app(output_dir: Path, *, host: str = "127.0.0.1", port: int = 8765, token: str | None = None,
               reviewer: str = "", csrf_secret: str | None = None) -> Starlette:
    """The review app of ``output_dir`` (its ``lesions.csv``, ``measurements.csv``, ``catalog.sqlite``).

    Parameters
    ----------
    output_dir
        Output folder of ``crav run``.
    host, port
        Where the server is bound: the Host header is checked against ``host``; the token cookie
        is named after ``port`` (two servers on one machine keep their own).
    token
        Access token (see :func:`resolve_token`); None: no token (loopback only).
    reviewer
        Pre-filled reviewer name.
    csrf_secret
        Secret of the state-changing requests (default: a new random one).
    """
    output_dir = Path(output_dir)
    store = ReviewStore.open(output_dir / "catalog.sqlite")
    qa = _QA(output_dir, store, csrf_secret or secrets.token_urlsafe(32), reviewer, _templates(), threading.Lock())

    def index(request: Request) -> Response:
        try:
            tables = pages.read_tables(output_dir)
        except FileNotFoundError as exc:
            return qa.render("error.j2", status_code=503, title="No results", message=str(exc))
        data = pages.list_page(tables, store.latest())
        chosen = {k: request.query_params.get(k, "") for k in ("status", "outcome", "q")}
        return qa.render("list.j2", title="CRAV QA: lesions", filters=chosen, **data)

    def lesion(request: Request) -> Response:
        try:
            ids = _lesion_ids(request.scope)
        except UnicodeDecodeError:
            ids = None
        if ids is None:
            return qa.not_found("No such lesion address.")
        try:
            tables = pages.read_tables(output_dir)
        except FileNotFoundError as exc:
            return qa.render("error.j2", status_code=503, title="No results", message=str(exc))
        data = pages.lesion_page(output_dir, tables, store, ids[0], ids[1])
        if data is None:
            return qa.not_found("This lesion is not in lesions.csv.")
        return qa.render("lesion.j2", title=f"CRAV QA: {ids[1]}", reviewer=qa.reviewer, **data)

    def image(request: Request) -> Response:
        path = _image_path(output_dir, request.path_params["rest"])
        if path is None:
            return PlainTextResponse("image not available", status_code=404)
        return FileResponse(path, media_type="image/png")

    def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in _STATIC:
            return PlainTextResponse("not found", status_code=404)
        text = resources.files("pipeline.review").joinpath("static", name).read_text(encoding="utf-8")
        return Response(text, media_type=_STATIC[name])

    async def review(request: Request) -> Response:
        if not hmac.compare_digest(request.headers.get(CSRF_HEADER, "").encode(), qa.csrf.encode()):
            return _bad("missing or wrong CSRF secret: reload the page", 403)
        if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
            return _bad("send the verdict as JSON (Content-Type: application/json)", 415)
        origin = request.headers.get("origin")
        if origin is not None and origin != f"{request.url.scheme}://{request.headers.get('host', '')}":
            return _bad("cross-origin request refused", 403)
        try:
            payload = json.loads(await request.body())
        except ValueError:
            return _bad("the request body is not valid JSON")
        if not isinstance(payload, dict):
            return _bad("the request body must be a JSON object")
        return await run_in_threadpool(_record_verdict, qa, payload)

    def favicon(request: Request) -> Response:
        return Response(status_code=204)

    routes = [
        Route("/", index),
        Route("/lesion/{rest:path}", lesion),
        Route("/img/{rest:path}", image),
        Route("/static/{name}", static),
        Route("/api/review", review, methods=["POST"]),
        Route("/favicon.ico", favicon),
    ]
    app = Starlette(routes=routes, max_body_size=_MAX_BODY_BYTES)
    app.state.qa = qa
    app.add_middleware(Guard, hosts=allowed_hosts(host), token=token, cookie=f"crav_qa_token_{port}")
    return app


def _listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host``:``port`` (port 0: any free port)."""
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host.strip("[]"), port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


def serve(output_dir: Path, *, host: str = "127.0.0.1", port: int = 8765, token: str | None = None,
          reviewer: str = "", echo: Callable[[str], None] | None = None) -> None:
    """Serve the review page of ``output_dir`` until interrupted (Ctrl-C or SIGTERM stop it cleanly).

    Prints the URL once (with ``?token=`` when a token is in force).

    Raises
    ------
    FileNotFoundError
        If ``output_dir`` holds no ``lesions.csv`` or no ``catalog.sqlite``.
    ValueError
        If the token is malformed.
    OSError
        If the address cannot be listened on (port in use...).
    """
    import uvicorn

    say = echo or (lambda text: print(text, flush=True))
    for name in ("lesions.csv", "catalog.sqlite"):
        if not (output_dir / name).is_file():
            raise FileNotFoundError(f"{output_dir} holds no {name}: give the output folder of a crav run")
    token = resolve_token(host, token)
    sock = _listen(host, port)
    port = int(sock.getsockname()[1])
    app = create_app(output_dir, host=host, port=port, token=token, reviewer=reviewer)
    review_log = logging.getLogger("pipeline.review")
    if not logging.getLogger().handlers and not review_log.handlers:  # nobody configured logging: the request log
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        review_log.addHandler(handler)
        review_log.setLevel(logging.INFO)
    shown = socket.gethostname() if is_wildcard(host) else (f"[{host}]" if ":" in host else host)
    url = f"http://{shown}:{port}/" + (f"?token={token}" if token else "")
    say(f"crav qa: reviewing {output_dir} at {url}\n(press Ctrl-C to stop)")
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", server_header=False)
    # uvicorn shuts down gracefully on SIGINT / SIGTERM, then raises the signal again: end here, cleanly
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _stop) if in_main else None
    try:
        uvicorn.Server(config).run(sockets=[sock])
    except (KeyboardInterrupt, _TerminatedError):
        pass
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)
        sock.close()
        app.state.qa.store.close()
    say("crav qa: stopped")


class _TerminatedError(Exception):
    """SIGTERM received (after uvicorn's graceful shutdown)."""


def _stop(signum: int, frame: object) -> None:
    raise _TerminatedError
