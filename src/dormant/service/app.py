"""The service's ASGI app: the JSON API, the dashboard, a size limit on every body, one
line for every error (never a traceback), and a log line for every write and every
refusal in ``service.log`` beside the store's ledger."""

from __future__ import annotations

import json
import logging
import secrets
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from dormant.errors import DormantError
from dormant.requests.store import StoreBusy, one_line_of
from dormant.service.state import Service

log = logging.getLogger("dormant.service")


class TooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the body is over this route's limit of {limit:,} bytes; send "
                              "less (file a long list of ids as several requests)")


class BodyLimit:
    """Refuse a body over the limit (413) from its Content-Length, or, without one, as soon
    as the bytes read pass it: nothing over the limit is ever held whole."""

    def __init__(self, app, service: Service) -> None:
        self.app = app
        self.limits = service.limits

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        upload = scope["method"] == "PUT" and scope["path"].startswith("/models/")
        limit = self.limits.max_upload if upload else self.limits.max_body
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            return await _send_json(send, 413, TooLarge(limit).detail)
        seen = 0

        async def limited():
            nonlocal seen
            msg = await receive()
            seen += len(msg.get("body", b""))
            if seen > limit:
                raise TooLarge(limit)
            return msg

        return await self.app(scope, limited, send)


async def _send_json(send, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class AuditLog:
    """One log line for each write (any method but GET and HEAD) and each refusal (4xx, 5xx):
    who (the token's id and name), what, the answer, and its message."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = 500
        t0 = time.perf_counter()

        async def watch(msg):
            nonlocal status
            if msg["type"] == "http.response.start":
                status = msg["status"]
            await send(msg)

        crashed = None
        try:
            await self.app(scope, receive, watch)
        except Exception as e:  # answered by the 500 handler outside; logged here as well
            crashed = f"{type(e).__name__}: {one_line_of(e)}"
            raise
        finally:
            if scope["method"] not in ("GET", "HEAD") or status >= 400:
                state = scope.get("state") or {}
                caller = state.get("caller")
                log.info(json.dumps({
                    "event": "http", "method": scope["method"], "path": scope["path"],
                    "status": status, "ms": round(1000 * (time.perf_counter() - t0), 1),
                    "token": None if caller is None else caller.id,
                    "name": None if caller is None else caller.name,
                    "error": state.get("error") or crashed}))


def _one_line(text: str) -> str:
    return " ".join(str(text).split())[:500]


def _answer(request: Request, status: int, message: str, headers: dict | None = None):
    request.state.error = message
    if request.url.path.startswith("/ui"):
        from dormant.service.dashboard import error_page

        return error_page(request, status, message)
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _validation_line(e: RequestValidationError) -> tuple[int, str]:
    errors = e.errors()
    first = errors[0] if errors else {}
    if first.get("type") == "json_invalid":
        return 400, "the body is not valid JSON; send a JSON object (Content-Type: " \
                    "application/json)"
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "the body"
    msg = first.get("msg", "is not valid")
    if first.get("type") == "model_attributes_type" or where == "the body":
        return 422, f"the body: {msg}; send a JSON object (see /docs)"
    return 422, f"{where}: {msg}" + (f" ({len(errors) - 1} more problem(s))"
                                     if len(errors) > 1 else "")


def create_app(service: Service) -> FastAPI:
    from dormant.service.api import router
    from dormant.service.dashboard import router as ui

    @asynccontextmanager
    async def lifespan(_app):
        service.start()
        yield
        service.stop()

    app = FastAPI(title="dormant deletion-request service", lifespan=lifespan,
                  description="File deletion requests against a model store, follow them, "
                              "sign off warned versions and verify the ledger. Every route "
                              "takes 'Authorization: Bearer TOKEN' (dormant token create).")
    app.state.service = service

    @app.exception_handler(StarletteHTTPException)  # the router's 404 and 405 too
    async def http_error(request: Request, e: StarletteHTTPException):
        return _answer(request, e.status_code, _one_line(e.detail), e.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError):
        status, message = _validation_line(e)
        return _answer(request, status, _one_line(message))

    @app.exception_handler(DormantError)
    async def refused(request: Request, e: DormantError):
        message = _one_line(service.public(str(e)))
        if isinstance(e, StoreBusy):
            return _answer(request, 503, message, {"Retry-After": "5"})
        return _answer(request, 400, message)

    @app.exception_handler(Exception)
    async def crashed(request: Request, e: Exception):
        ref = secrets.token_hex(4)
        log.error(json.dumps({"event": "internal-error", "ref": ref, "path": request.url.path,
                              "error": one_line_of(e)}), exc_info=e)
        return _answer(request, 500, f"internal error (ref {ref}); the service log has the "
                                     "details")

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict:  # for a load balancer: says nothing of the store or the queue
        return {"ok": True}

    @app.get("/", include_in_schema=False)
    def home():
        return RedirectResponse("/ui")

    app.include_router(router)
    app.include_router(ui)
    app.add_middleware(BodyLimit, service=service)
    app.add_middleware(AuditLog)  # outermost: it logs BodyLimit's refusals too
    return app


def log_to(path) -> None:
    """Send the service's log lines to ``path`` (appending), each with its UTC time."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s",
                                           "%Y-%m-%dT%H:%M:%S"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
