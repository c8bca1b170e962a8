"""The web dashboard, rendered on the server: the models and their versions, the request
queue, each request's before/after table, verdict and report, the ledger's state and head,
and, for reviewers, the sign-off buttons; requesters can file a request from a form.

One signs in by pasting a token; the session is an HttpOnly, SameSite=Strict cookie, and
every form carries a value another site cannot read (``tokens.form_key``)."""

from __future__ import annotations

import hmac
from pathlib import Path
from urllib.parse import parse_qs

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool

from dormant.errors import DormantError
from dormant.service.api import FileRequest, check_filing, report_html, sign_off, visible_request
from dormant.service.tokens import Caller, authenticate, form_key
from dormant.service.views import ledger_view, model_view, models_view, requests_view
from dormant.settings import validate

COOKIE = "dormant_session"
templates = Jinja2Templates(directory=Path(__file__).parent / "templates")
router = APIRouter(prefix="/ui", include_in_schema=False)


def _session(request: Request) -> tuple[Caller, str]:
    text = request.cookies.get(COOKIE, "")
    caller = authenticate(request.app.state.service.db, text)
    if caller is None:
        raise HTTPException(303, "sign in", headers={"Location": "/ui/login"})
    request.state.caller = caller
    return caller, text


async def _form(request: Request, token: str | None) -> dict[str, str]:
    """The posted form's fields; 403 unless it carries the session's form key."""
    fields = {k: v[-1] for k, v in parse_qs((await request.body()).decode("utf-8", "replace"),
                                            keep_blank_values=True).items()}
    if token is not None and not hmac.compare_digest(fields.get("form_key", ""),
                                                     form_key(token)):
        raise HTTPException(403, "the form is stale or came from another site; reload the "
                                 "page and try again")
    return fields


def _page(request: Request, name: str, caller: Caller | None, token: str | None, **ctx):
    return templates.TemplateResponse(request, name, {
        "caller": caller, "form_key": form_key(token) if token else "", **ctx})


def error_page(request: Request, status: int, message: str) -> Response:
    if status == 303:
        return RedirectResponse("/ui/login", status_code=303)
    return templates.TemplateResponse(request, "error.html", {
        "caller": None, "status": status, "message": message, "form_key": ""},
        status_code=status)


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request, problem: str = "") -> Response:
    return _page(request, "login.html", None, None, problem=problem[:200])


@router.post("/login")
async def login(request: Request) -> Response:
    fields = await _form(request, None)
    text = fields.get("token", "").strip()
    if authenticate(request.app.state.service.db, text) is None:
        return _page(request, "login.html", None, None,
                     problem="That token is not valid: unknown, mistyped or revoked.")
    out = RedirectResponse("/ui", status_code=303)
    out.set_cookie(COOKIE, text, httponly=True, samesite="strict", path="/ui",
                   secure=request.url.scheme == "https")
    return out


@router.post("/logout")
async def logout(request: Request) -> Response:
    _, token = _session(request)
    await _form(request, token)
    out = RedirectResponse("/ui/login", status_code=303)
    out.delete_cookie(COOKIE, path="/ui")
    return out


@router.get("", response_class=HTMLResponse)
def overview(request: Request, verify_files: bool = False) -> Response:
    caller, token = _session(request)
    svc = request.app.state.service
    st = svc.store()
    return _page(request, "overview.html", caller, token, models=models_view(st),
                 queue=svc.db.counts(),
                 requests=requests_view(st, svc.db, caller, limit=50),
                 ledger=ledger_view(st, verify_files), verified_files=verify_files)


@router.get("/models/{name}", response_class=HTMLResponse)
def model_page(request: Request, name: str) -> Response:
    caller, token = _session(request)
    return _page(request, "model.html", caller, token,
                 model=model_view(request.app.state.service.store(), name))


@router.get("/requests/{rid}", response_class=HTMLResponse)
def request_page(request: Request, rid: str, done: str = "") -> Response:
    caller, token = _session(request)
    view = visible_request(request.app.state.service, rid, caller)
    return _page(request, "request.html", caller, token, r=view, done=done[:100])


@router.get("/requests/{rid}/report", response_class=HTMLResponse)
def report_page(request: Request, rid: str) -> HTMLResponse:
    caller, _ = _session(request)
    svc = request.app.state.service
    return HTMLResponse(report_html(svc, visible_request(svc, rid, caller)))


async def _sign(request: Request, rid: str, approve: bool) -> Response:
    caller, token = _session(request)
    fields = await _form(request, token)
    if not caller.can("sign_off"):
        raise HTTPException(403, f"a {caller.role} token cannot sign off; sign in as a "
                                 "reviewer")
    svc = request.app.state.service
    try:  # the store's lock may be taken by a running request: wait off the event loop
        await run_in_threadpool(sign_off, svc, rid, caller, approve, fields.get("comment", ""))
    except DormantError as e:
        request.state.error = problem = svc.public(str(e))
        view = await run_in_threadpool(visible_request, svc, rid, caller)
        return _page(request, "request.html", caller, token, r=view, problem=problem,
                     comment=fields.get("comment", ""))
    return RedirectResponse(f"/ui/requests/{rid}?done={'approved' if approve else 'rejected'}",
                            status_code=303)


@router.post("/requests/{rid}/approve")
async def approve(request: Request, rid: str) -> Response:
    return await _sign(request, rid, True)


@router.post("/requests/{rid}/reject")
async def reject(request: Request, rid: str) -> Response:
    return await _sign(request, rid, False)


@router.get("/file", response_class=HTMLResponse)
def file_page(request: Request) -> Response:
    caller, token = _session(request)
    svc = request.app.state.service
    return _page(request, "file.html", caller, token, models=models_view(svc.store()),
                 policies=list(svc.engine.policies), fields={})


@router.post("/file")
async def file_request(request: Request) -> Response:
    caller, token = _session(request)
    fields = await _form(request, token)
    svc = request.app.state.service
    if not caller.can("file"):
        raise HTTPException(403, f"a {caller.role} token cannot file requests; sign in with a "
                                 "requester's token")
    try:
        ids = [int(t) for t in fields.get("ids", "").replace(",", " ").split()]
        if not ids:
            raise DormantError("list at least one training id to delete")
        body = validate(FileRequest, {
            "model": fields.get("model", ""), "ids": ids,
            "requester": fields.get("requester", ""), "reason": fields.get("reason", ""),
            "policy": fields.get("policy") or None}, "the form")
        await run_in_threadpool(check_filing, svc, body)
    except ValueError:
        problem = "the ids must be whole numbers, separated by spaces, commas or new lines"
    except DormantError as e:
        problem = svc.public(str(e))
    else:
        q, _ = await run_in_threadpool(svc.file, caller, body.model_dump(), None)
        return RedirectResponse(f"/ui/requests/{q.id}", status_code=303)
    request.state.error = problem
    return _page(request, "file.html", caller, token, models=models_view(svc.store()),
                 policies=list(svc.engine.policies), fields=fields, problem=problem)
