"""The aiohttp edge of the web UI and its JSON API (docs/http-api.md): routes, authentication, errors,
security headers, static files and the server-sent event stream.

Thin: a handler parses its parameters (`web.params`, pure), runs the read (`web.service.WebReader`,
blocking) on the app's thread pool, and writes the JSON. Errors are mapped to status codes in one place,
`error_answer`. Authentication runs before every handler but the public ones (`/login`, `/logout`,
`/static/…`): `web.service.web_caller` over the master's guard (its ACL), with the token from
`Authorization: Bearer` or the `tessera_token` cookie that `POST /login` sets (HttpOnly, Secure,
SameSite=Strict). A POST from another origin is refused (CSRF). There are no writes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import mimetypes
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from tessera.control_plane.core.acl import Caller
from tessera.control_plane.core.errors import (
    InvalidRequest,
    NotFound,
    NotLeader,
    PermissionDenied,
    TesseraError,
    Unauthenticated,
    Unavailable,
)
from tessera.control_plane.eventlog import EventRecord
from tessera.control_plane.eventlog.errors import (
    AmbiguousTask,
    HistoryError,
    HistoryPruned,
    HistoryUnavailable,
    PointOutOfRange,
)
from tessera.control_plane.web import params, views
from tessera.control_plane.web.service import WebError, WebReader, visibility_of, web_caller

log = logging.getLogger(__name__)

COOKIE = "tessera_token"
STREAM_BATCH = 500
STREAM_POLL_SECONDS = 0.1
STREAM_HEARTBEAT_SECONDS = 1.0
PAGES = ("agents", "frameworks", "tasks", "services")
LIST_PAGES = ("", "agents", "frameworks", "tasks", "events", "timetravel", "services")
CONTENT_TYPES = {".js": "text/javascript", ".mjs": "text/javascript", ".css": "text/css", ".html": "text/html",
                 ".svg": "image/svg+xml", ".png": "image/png", ".json": "application/json",
                 ".woff2": "font/woff2", ".ico": "image/x-icon", ".map": "application/json", ".txt": "text/plain"}
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
                               "script-src 'self'; connect-src 'self'; frame-ancestors 'none'",
}
FALLBACK_LOGIN = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Tessera: log in</title></head>
<body><h1>Tessera</h1><form method="post" action="/login">
<label>Token <input type="password" name="token" autocomplete="current-password" required></label>
<button type="submit">Log in</button></form></body></html>
"""
FALLBACK_INDEX = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Tessera</title></head>
<body><h1>Tessera</h1><p>The UI's files are not installed; the JSON API is at <a href="/api/v1/cluster">/api/v1/cluster</a>.</p></body></html>
"""

Json = dict[str, Any]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# ---- errors: one mapping ----------------------------------------------------------------------------
def error_answer(exc: BaseException) -> tuple[int, Json]:
    """(status, body) of an error: `{"error": {"code", "message", "field"}}` plus the error's extras."""
    field = getattr(exc, "field", None)
    extra: Json = {}
    if isinstance(exc, WebError):
        status, code, message, extra = exc.status, exc.code, exc.message, dict(exc.extra)
    elif isinstance(exc, HistoryPruned):
        status, code, message = 410, "history_pruned", f"events before index {exc.first_kept} are no longer kept"
        extra = {"first_index": exc.first_kept}
    elif isinstance(exc, HistoryUnavailable) and exc.pruned:
        status, code, message = 410, "history_pruned", str(exc)
        extra = {"first_index": exc.first_available}
    elif isinstance(exc, (PointOutOfRange, AmbiguousTask)):
        status, code, message = 400, "invalid_argument", str(exc)
    elif isinstance(exc, HistoryError):
        status, code, message = 409, "history_unavailable", str(exc)
    elif isinstance(exc, InvalidRequest):
        status, code, message = 400, "invalid_argument", exc.message
    elif isinstance(exc, Unauthenticated):
        status, code, message = 401, "unauthenticated", exc.message
    elif isinstance(exc, PermissionDenied):
        status, code, message = 403, "permission_denied", exc.message
    elif isinstance(exc, NotFound):
        status, code, message = 404, "not_found", exc.message
    elif isinstance(exc, NotLeader):
        status, code, message = 503, "not_leader", exc.message
    elif isinstance(exc, Unavailable):
        status, code, message = 503, "unavailable", exc.message
    elif isinstance(exc, TesseraError):
        status, code, message = 409, "conflict", exc.message
    else:
        status, code, message = 500, "internal", "internal error (see the master's log)"
    return status, {"error": {"code": code, "message": message, "field": field, **extra}}


def json_response(body: Any, status: int = 200) -> web.Response:
    return json_text_response(views.json_text(body), status)


def json_text_response(text: str, status: int = 200) -> web.Response:
    """An answer already written as JSON text (`views.json_text`; big ones are written off the loop)."""
    return web.Response(status=status, text=text, content_type="application/json", charset="utf-8")


def _is_api(request: web.Request) -> bool:
    return request.path.startswith("/api/")


# ---- the app ----------------------------------------------------------------------------------------
class WebApp:
    """The routes over one `WebReader`; `static_dir` holds index.html, login.html and the assets."""

    def __init__(self, reader: WebReader, static_dir: Path, guard: Any, executor: ThreadPoolExecutor) -> None:
        self.reader = reader
        self.static_dir = static_dir.resolve()
        self.guard = guard
        self.executor = executor

    def build(self) -> web.Application:
        app = web.Application(middlewares=[self._headers, self._errors, self._auth],
                              client_max_size=64 * 1024, handler_args={"max_field_size": 16384})
        r = app.router
        r.add_get("/api/v1/cluster", self.cluster)
        r.add_get("/api/v1/agents", self.agents)
        r.add_get("/api/v1/agents/{id}", self.agent)
        r.add_get("/api/v1/frameworks", self.frameworks)
        r.add_get("/api/v1/frameworks/{id}", self.framework)
        r.add_get("/api/v1/tasks", self.tasks)
        r.add_get("/api/v1/tasks/{ref}", self.task)
        r.add_get("/api/v1/tasks/{ref}/timeline", self.task_timeline)
        r.add_get("/api/v1/tasks/{ref}/trace", self.task_trace)
        r.add_get("/api/v1/tasks/{ref}/output", self.task_output)
        r.add_get("/api/v1/events", self.events)
        r.add_get("/api/v1/events/stream", self.stream)
        r.add_get("/api/v1/state", self.state)
        r.add_get("/api/v1/diff", self.diff)
        r.add_get("/api/v1/services", self.services)
        r.add_get("/api/v1/services/{id}", self.service)
        r.add_get("/login", self.login_page)
        r.add_post("/login", self.login)
        r.add_post("/logout", self.logout)
        r.add_get("/static/{path:.+}", self.static)
        for page in LIST_PAGES:
            r.add_get(f"/{page}", self.page)
        for page in PAGES:
            r.add_get(f"/{page}/{{id}}", self.page)
        return app

    async def run(self, fn: Callable[[], Any]) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn)

    # ---- middlewares --------------------------------------------------------------------------------
    @web.middleware
    async def _headers(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await handler(request)
        if not response.prepared:
            response.headers.update(SECURITY_HEADERS)
        return response

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            if not _is_api(request) and exc.status == 404 and request.method == "GET":
                return await self._index(404, "no such page")
            message = exc.reason or "error"
            code = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}.get(exc.status, "bad_request")
            return json_response({"error": {"code": code, "message": message, "field": None}}, exc.status)
        except (TesseraError, WebError, HistoryError, HistoryPruned) as exc:
            status, body = error_answer(exc)
            if not _is_api(request) and body["error"]["code"] in ("unauthenticated", "permission_denied"):
                return await self._login(status, body["error"]["message"])
            return json_response(body, status)
        except (ConnectionResetError, asyncio.CancelledError):
            raise
        except Exception as exc:  # noqa: BLE001 - one request's bug answers 500, the server goes on
            log.exception("web request %s %s failed", request.method, request.path)
            status, body = error_answer(exc)
            return json_response(body, status)

    def _token(self, request: web.Request) -> str | None:
        header = request.headers.get("Authorization", "")
        if header[:7].lower() == "bearer ":
            return header[7:].strip() or None
        return request.cookies.get(COOKIE) or None

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith("/static/") or request.path in ("/login", "/logout"):
            return await handler(request)
        self._caller(request)  # before any handler: refused requests reach none
        return await handler(request)

    def _caller(self, request: web.Request) -> Caller:
        return web_caller(self.guard, self._token(request))

    # ---- pages --------------------------------------------------------------------------------------
    def _file(self, name: str) -> bytes | None:
        try:
            return (self.static_dir / name).read_bytes()
        except OSError:
            return None

    async def _index(self, status: int, not_found: str | None = None) -> web.Response:
        body = await self.run(lambda: self._file("index.html"))
        response = web.Response(status=status, body=body or FALLBACK_INDEX.encode(), content_type="text/html",
                                charset="utf-8", headers={"Cache-Control": "no-cache"})
        if not_found:
            response.headers["X-Tessera-Not-Found"] = _header_text(not_found)
        return response

    async def _login(self, status: int, error: str | None = None) -> web.Response:
        body = await self.run(lambda: self._file("login.html"))
        response = web.Response(status=status, body=body or FALLBACK_LOGIN.encode(), content_type="text/html",
                                charset="utf-8", headers={"Cache-Control": "no-store"})
        if error:
            response.headers["X-Tessera-Login-Error"] = _header_text(error)
        return response

    async def page(self, request: web.Request) -> web.Response:
        kind = request.path.strip("/").split("/", 1)[0]
        ident = request.match_info.get("id")
        if ident is not None:
            missing = await self.run(lambda: self.reader.page_exists(kind, ident))
            if missing:
                return await self._index(404, missing)
        return await self._index(200)

    async def static(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["path"]
        if any(ord(c) < 32 for c in name):  # a NUL is not a file name (and would make the OS call raise)
            raise web.HTTPNotFound(reason="no such file")
        try:
            path = (self.static_dir / name).resolve()
            found = self.static_dir in path.parents and path.is_file()
        except OSError:  # a name the OS refuses (too long, a component over NAME_MAX) names no file either
            found = False
        if not found:
            raise web.HTTPNotFound(reason="no such file")
        content_type = CONTENT_TYPES.get(path.suffix.lower()) or mimetypes.guess_type(path.name)[0] or \
            "application/octet-stream"
        body = await self.run(path.read_bytes)
        return web.Response(body=body, headers={"Content-Type": content_type, "Cache-Control": "no-cache"})

    # ---- login --------------------------------------------------------------------------------------
    async def login_page(self, request: web.Request) -> web.Response:
        return await self._login(200)

    def _check_origin(self, request: web.Request) -> None:
        own = f"{request.scheme}://{request.host}"
        origin = request.headers.get("Origin")
        if origin is None:
            referer = request.headers.get("Referer", "")
            parts = urlsplit(referer)
            origin = f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else None
        if origin != own:
            raise WebError(403, "csrf", f"a POST must come from this server's own pages ({own})")

    async def login(self, request: web.Request) -> web.Response:
        self._check_origin(request)
        form = await request.post()
        token = str(form.get("token", ""))[:4096]
        target = str(form.get("next", "/"))
        if not target.startswith("/") or target.startswith("//") or "\\" in target or len(target) > 2048:
            target = "/"
        try:
            web_caller(self.guard, token)
        except (Unauthenticated, PermissionDenied) as exc:  # unknown token 401, known but may not read 403
            status, _ = error_answer(exc)
            return await self._login(status, exc.message)
        response = web.HTTPSeeOther(target)
        if self.guard.acl is not None:
            response.set_cookie(COOKIE, token, httponly=True, secure=True, samesite="Strict", path="/")
        raise response

    async def logout(self, request: web.Request) -> web.Response:
        self._check_origin(request)
        response = web.HTTPSeeOther("/login")
        response.del_cookie(COOKIE, path="/")
        raise response

    # ---- the JSON API -------------------------------------------------------------------------------
    def _visibility(self, request: web.Request) -> Any:
        return visibility_of(self._caller(request))

    async def cluster(self, request: web.Request) -> web.Response:
        vis = self._visibility(request)
        return json_response(await self.run(lambda: self.reader.cluster(vis)))

    async def agents(self, request: web.Request) -> web.Response:
        listing = params.agent_listing(request.query)
        return json_response(await self.run(lambda: self.reader.agents(listing)))

    async def agent(self, request: web.Request) -> web.Response:
        ident = params.text({"id": request.match_info["id"]}, "id")
        return json_response(await self.run(lambda: self.reader.agent(ident)))

    async def frameworks(self, request: web.Request) -> web.Response:
        listing = params.framework_listing(request.query)
        return json_response(await self.run(lambda: self.reader.frameworks(listing)))

    async def framework(self, request: web.Request) -> web.Response:
        ident = params.text({"id": request.match_info["id"]}, "id")
        return json_response(await self.run(lambda: self.reader.framework(ident)))

    async def tasks(self, request: web.Request) -> web.Response:
        listing = params.task_listing(request.query)
        return json_response(await self.run(lambda: self.reader.tasks(listing)))

    @staticmethod
    def _ref(request: web.Request) -> str:
        return params.text({"task": request.match_info["ref"]}, "task")

    async def task(self, request: web.Request) -> web.Response:
        ref, vis = self._ref(request), self._visibility(request)
        return json_response(await self.run(lambda: self.reader.task(ref, vis)))

    async def task_timeline(self, request: web.Request) -> web.Response:
        ref, vis = self._ref(request), self._visibility(request)
        return json_response(await self.run(lambda: self.reader.task_timeline(ref, vis)))

    async def task_trace(self, request: web.Request) -> web.Response:
        ref, vis = self._ref(request), self._visibility(request)
        return json_response(await self.run(lambda: self.reader.task_trace(ref, vis)))

    async def task_output(self, request: web.Request) -> web.Response:
        ref, q, caller = self._ref(request), params.output_query(request.query), self._caller(request)
        return json_response(await self.run(lambda: self.reader.task_output(ref, q, caller)))

    async def events(self, request: web.Request) -> web.Response:
        q, vis = params.event_query(request.query), self._visibility(request)
        return json_response(await self.run(lambda: self.reader.events(q, vis)))

    async def state(self, request: web.Request) -> web.Response:
        import time

        at = params.point(request.query, "at", time.time())
        page, vis = params.page(request.query), self._visibility(request)
        return json_text_response(await self.run(lambda: self.reader.state_at(at, None, vis, page)))

    async def diff(self, request: web.Request) -> web.Response:
        import time

        now = time.time()
        since = params.point(request.query, "from", now, required=True)
        at = params.point(request.query, "to", now)
        page, vis = params.page(request.query), self._visibility(request)
        return json_text_response(await self.run(lambda: self.reader.state_at(at, since, vis, page)))

    async def services(self, request: web.Request) -> web.Response:
        vis = self._visibility(request)
        return json_response(await self.run(lambda: self.reader.services(vis)))

    async def service(self, request: web.Request) -> web.Response:
        ident, vis = params.text({"id": request.match_info["id"]}, "id"), self._visibility(request)
        return json_response(await self.run(lambda: self.reader.service(ident, vis)))

    # ---- the live event stream ----------------------------------------------------------------------
    async def stream(self, request: web.Request) -> web.StreamResponse:
        q = params.event_query(request.query)
        start = params.stream_start(request.query, request.headers.get("Last-Event-ID"))
        vis = self._visibility(request)
        store = self.reader.master.events
        flt = self.reader.event_filter(q)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8",
                                               "Cache-Control": "no-cache", "X-Accel-Buffering": "no",
                                               **SECURITY_HEADERS})
        await response.prepare(request)
        cursor = start if start is not None else store.last_seq() + 1
        quiet = 0.0
        try:
            while True:
                first, last = store.first_seq(), store.last_seq()
                if cursor < first:
                    await response.write(sse("gap", {"requested": cursor, "first_index": first, "message":
                                                     f"events {cursor} to {first - 1} are no longer kept; "
                                                     f"going on from {first}"}))
                    cursor = first
                if cursor <= last:
                    batch = await asyncio.get_running_loop().run_in_executor(
                        self.executor, self._batch, cursor, last, flt, vis)
                    if batch is None:  # pruned meanwhile: said as a gap on the next turn
                        continue
                    cursor, lines = batch
                    for seq, body in lines:
                        await response.write(sse("event", body, seq))
                    if lines:
                        quiet = 0.0
                        continue
                await asyncio.sleep(STREAM_POLL_SECONDS)
                quiet += STREAM_POLL_SECONDS
                if quiet >= STREAM_HEARTBEAT_SECONDS:
                    quiet = 0.0
                    await response.write(sse("heartbeat", {"last_index": store.last_seq()}))
        except (ConnectionResetError, ConnectionError):
            pass
        return response

    def _batch(self, cursor: int, last: int, flt: Any, vis: Any) -> tuple[int, list[tuple[int, Json]]] | None:
        """The next matching events from `cursor` up to `last`, and the cursor after them."""
        store = self.reader.master.events
        try:
            records: list[EventRecord] = [r for r in store.list(from_seq=cursor, limit=STREAM_BATCH, flt=flt)
                                          if r.seq <= last]
        except HistoryPruned:
            return None
        after = records[-1].seq + 1 if len(records) == STREAM_BATCH else last + 1
        reader = self.reader.reader_for(vis) if records else None
        return after, [(r.seq, reader.event(r)) for r in records] if reader is not None else []


def sse(event: str, data: Any, ident: int | None = None) -> bytes:
    """One server-sent event (the data on one line: JSON never holds a raw newline)."""
    head = f"event: {event}\n" + (f"id: {ident}\n" if ident is not None else "")
    return (head + "data: " + json.dumps(data, ensure_ascii=False, separators=(",", ":")) + "\n\n").encode()


def _header_text(text: str) -> str:
    """A message fit for a header value: printable ASCII, one line, bounded."""
    return "".join(c if 32 <= ord(c) < 127 else "?" for c in text)[:300]
