"""The JSON API: file a deletion request, follow it, sign off a warned version, read the
models and verify the ledger; admins add models and tokens. Every route takes a bearer token
(``Authorization: Bearer dmt_...``); none takes a file path from the client."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import APIRouter, Body, Depends, Header, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from dormant.data.forget import check_ids
from dormant.errors import DormantError
from dormant.requests.request import check_text
from dormant.requests.store import parse_ref
from dormant.service.db import STATUSES
from dormant.service.state import Service
from dormant.service.tokens import ROLES, Caller, authenticate, create_token
from dormant.service.views import (
    ledger_view,
    model_view,
    models_view,
    request_view,
    requests_view,
    visible,
)


class FileRequest(BaseModel):
    """A deletion request as a privacy system files it."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    model: str = Field(max_length=100, description="NAME or NAME@VERSION in the store")
    ids: list[int] = Field(min_length=1, description="training ids to delete")
    requester: str = Field(max_length=200, description="who asked for the deletion")
    reason: str = Field(max_length=500, description="why, in a few words")
    method: str | None = Field(None, max_length=64,
                               description="unlearning method (default: the exact one)")
    hparams: dict[str, int | float | bool | str] = Field(
        default_factory=dict, description="the method's hyper-parameters")
    policy: str | None = Field(None, max_length=64,
                               description="one of the policies the service was started with")
    callback_url: str | None = Field(None, max_length=2048,
                                     description="where to POST each status change")


class SignOff(BaseModel):
    model_config = ConfigDict(extra="forbid")
    comment: str = Field(max_length=1000, description="why, in a few words (recorded)")


class NewToken(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: str = Field(description=f"one of: {', '.join(ROLES)}")
    name: str = Field(max_length=64, description="whose token, e.g. fides-connector")


def service(request: Request) -> Service:
    return request.app.state.service


def bearer(request: Request, authorization: Annotated[str | None, Header()] = None) -> Caller:
    """The caller a bearer token proves; 401 in one line otherwise."""
    svc = service(request)
    scheme, _, text = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not text.strip():
        raise HTTPException(401, "no bearer token: send 'Authorization: Bearer TOKEN' (an "
                                 "admin makes one with dormant token create)")
    caller = authenticate(svc.db, text.strip())
    if caller is None:
        raise HTTPException(401, "the token is not valid: unknown, mistyped or revoked")
    request.state.caller = caller
    return caller


def allowed(permission: str):
    def check(caller: Annotated[Caller, Depends(bearer)]) -> Caller:
        if not caller.can(permission):
            raise HTTPException(403, f"a {caller.role} token cannot do this; it takes a token "
                                     f"with the permission {permission!r}")
        return caller
    return check


Anyone = Annotated[Caller, Depends(bearer)]
Svc = Annotated[Service, Depends(service)]
router = APIRouter()


def check_filing(svc: Service, body: FileRequest) -> None:
    """Every refusal a request can meet before it is queued, as one line (400)."""
    from dormant.requests.forget import method_of
    from dormant.unlearn import get_preset, make_hparams

    name, version = parse_ref(body.model)
    base = svc.store().resolve(name, version)
    check_text("requester", body.requester, "who asked for the deletion, e.g. alice")
    check_text("reason", body.reason, "why, in a few words, e.g. 'GDPR art. 17'")
    check_ids(body.ids, len(svc.engine.dataset.y_train), "ids")
    chosen = method_of(body.method, body.hparams, base)  # an unknown method is one line here
    get_preset(chosen, None)
    make_hparams(chosen, body.hparams)
    if (body.policy or "default") not in svc.engine.policies:
        raise DormantError(f"policy {body.policy!r} is not one this service has: "
                           f"{', '.join(svc.engine.policies)}")
    if body.callback_url is not None:
        u = urlsplit(body.callback_url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise DormantError(f"callback_url {body.callback_url[:100]!r} is not an http(s) "
                               "URL with a host")


@router.post("/requests", status_code=202, tags=["requests"])
def file_request(body: FileRequest, svc: Svc,
                 caller: Annotated[Caller, Depends(allowed("file"))],
                 idempotency_key: Annotated[str | None, Header(max_length=200)] = None
                 ) -> JSONResponse:
    """Queue a deletion request: 202 with its id at once; a worker processes the queue one
    request at a time. The same ``Idempotency-Key`` from the same token gives back the request
    it filed first (200), so a connector may retry a POST whose answer it lost."""
    check_filing(svc, body)
    data = body.model_dump()
    q, new = svc.file(caller, data, idempotency_key)
    if not new and q.body != data:
        raise HTTPException(409, f"Idempotency-Key {idempotency_key!r} was used for another "
                                 f"request ({q.id}); use a new key for a new request")
    return JSONResponse({"id": q.id, "status": q.status, "links": {
        "self": f"/requests/{q.id}", "dashboard": f"/ui/requests/{q.id}"}},
        status_code=202 if new else 200, headers={"Location": f"/requests/{q.id}"})


def visible_request(svc: Service, rid: str, caller: Caller) -> dict:
    if not re.fullmatch(r"[0-9a-f]{16}", rid):
        raise HTTPException(404, f"no request {rid[:40]!r}: a request id is 16 hex digits")
    view = request_view(svc.store(), svc.db, rid)
    if view is None or not visible(view, caller):  # another's request: as if there were none
        raise HTTPException(404, f"no request {rid} visible to this token")
    return view


@router.get("/requests/{rid}", tags=["requests"])
def get_request(rid: str, svc: Svc, caller: Anyone) -> dict:
    """Status (pending, running, finished, failed, denied), and once finished the verdict,
    the checks, the before/after table, the sign-off and the report's address."""
    return visible_request(svc, rid, caller)


@router.get("/requests/{rid}/report", response_class=HTMLResponse, tags=["requests"])
def get_report(rid: str, svc: Svc, caller: Anyone) -> HTMLResponse:
    """The request's HTML report (figures inline)."""
    return HTMLResponse(report_html(svc, visible_request(svc, rid, caller)))


def report_html(svc: Service, view: dict) -> str:
    path = svc.engine.root / "requests" / view["id"] / "report.html"
    if "verdict" not in view or not path.is_file():
        raise HTTPException(404, f"request {view['id']} has no report yet (status "
                                 f"{view['status']})")
    return path.read_text(encoding="utf-8")


@router.get("/requests", tags=["requests"])
def list_requests(svc: Svc, caller: Anyone,
                  status: Annotated[str | None, Query(description=", ".join(STATUSES))] = None,
                  model: Annotated[str | None, Query(max_length=100)] = None,
                  limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> dict:
    """The caller's requests (a reviewer's or admin's: all), newest first."""
    if status is not None and status not in STATUSES:
        raise DormantError(f"status {status!r} is not one of: {', '.join(STATUSES)}")
    return {"requests": requests_view(svc.store(), svc.db, caller, status=status, model=model,
                                      limit=limit)}


def sign_off(svc: Service, rid: str, caller: Caller, approve: bool, comment: str) -> dict:
    view = visible_request(svc, rid, caller)
    check_text("comment", comment, "why, in a few words")
    if "verdict" not in view:
        raise DormantError(f"request {rid} has not finished (status {view['status']}); there "
                           "is nothing to sign off yet")
    # the token's id beside its name: names of revoked tokens may come back
    v = svc.store().sign_off(view["model_name"], rid, approve=approve,
                             by=f"{caller.name} (token {caller.id})", comment=comment,
                             timeout=svc.limits.lock_wait)
    q = svc.db.get(rid)
    if q is not None:
        svc.signed_off(q, {"signoff": "approved" if approve else "rejected",
                           "by": caller.name, "to_version": v.version, "promoted": approve})
    return visible_request(svc, rid, caller)


@router.post("/requests/{rid}/approve", tags=["sign-off"])
def approve(rid: str, body: SignOff, svc: Svc,
            caller: Annotated[Caller, Depends(allowed("sign_off"))]) -> dict:
    """Promote the version a warning kept back; the ledger records the token's name as who
    approved, and the comment."""
    return sign_off(svc, rid, caller, True, body.comment)


@router.post("/requests/{rid}/reject", tags=["sign-off"])
def reject(rid: str, body: SignOff, svc: Svc,
           caller: Annotated[Caller, Depends(allowed("sign_off"))]) -> dict:
    """Keep the version a warning kept back out of service for good, recorded likewise."""
    return sign_off(svc, rid, caller, False, body.comment)


@router.get("/models", tags=["models"])
def list_models(svc: Svc, caller: Anyone) -> dict:
    return {"models": models_view(svc.store())}


@router.get("/models/{name}", tags=["models"])
def get_model(name: str, svc: Svc, caller: Anyone) -> dict:
    """Versions with their status, test accuracy and drift; the current one."""
    return model_view(svc.store(), parse_ref(name)[0])


@router.put("/models/{name}", status_code=201, tags=["models"])
async def add_model(name: str, request: Request, svc: Svc,
                    caller: Annotated[Caller, Depends(allowed("add_model"))],
                    arch: Annotated[str | None, Query(max_length=64)] = None,
                    new_lineage: Annotated[str | None, Query(max_length=300)] = None
                    ) -> dict:
    """Add the body (a .safetensors checkpoint, ``application/octet-stream``) as NAME's next
    version. ``arch`` names the architecture of plain weights."""
    from starlette.concurrency import run_in_threadpool

    from dormant.requests.deleters import add_model as add

    parse_ref(name)
    with tempfile.TemporaryDirectory(dir=svc.engine.root, prefix=".upload-") as tmp:
        path = Path(tmp) / "upload.safetensors"
        with path.open("wb") as f:
            async for chunk in request.stream():
                f.write(chunk)
        if path.stat().st_size == 0:
            raise DormantError("the body is empty; send the .safetensors checkpoint's bytes "
                               "as application/octet-stream")
        try:
            v = await run_in_threadpool(  # the store's ledger: opened in the thread using it
                lambda: add(svc.store(), name, path, arch=arch, new_lineage=new_lineage))
        except DormantError as e:  # said for the command line: put it in this route's terms
            raise DormantError(str(e).replace(str(path), "the uploaded checkpoint")
                               .replace("--arch", "?arch=").replace("--new-lineage",
                                                                     "?new_lineage=")) from None
    return {"name": name, "version": v.version, "sha256": v.sha256, "ledger_row": v.seq}


@router.get("/ledger/verify", tags=["ledger"])
def verify_ledger(svc: Svc, caller: Anyone,
                  files: Annotated[bool, Query(description="re-hash the checkpoints too")]
                  = False) -> dict:
    """Re-walk the hash chain (and, with ``files``, re-hash every checkpoint it names)."""
    return ledger_view(svc.store(), files)


@router.post("/tokens", status_code=201, tags=["tokens"])
def new_token(body: Annotated[NewToken, Body()], svc: Svc,
              caller: Annotated[Caller, Depends(allowed("tokens"))]) -> dict:
    """A new token, shown this once, and its callback secret."""
    text, t = create_token(svc.db, body.role, body.name)
    return {"id": t.id, "name": t.name, "role": t.role, "token": text,
            "callback_secret": t.secret}


@router.get("/tokens", tags=["tokens"])
def list_tokens(svc: Svc, caller: Annotated[Caller, Depends(allowed("tokens"))]) -> dict:
    return {"tokens": [{"id": t.id, "name": t.name, "role": t.role, "created": t.created,
                        "revoked": t.revoked} for t in svc.db.tokens()]}


@router.delete("/tokens/{tid}", tags=["tokens"])
def revoke_token(tid: str, svc: Svc,
                 caller: Annotated[Caller, Depends(allowed("tokens"))]) -> dict:
    t = svc.db.revoke(tid)
    return {"id": t.id, "name": t.name, "revoked": True}

