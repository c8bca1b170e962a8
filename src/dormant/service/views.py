"""What the API answers and the dashboard shows, read from the ledger (what happened) and the
service's queue (what is waiting), in one place so the two never disagree."""

from __future__ import annotations

from dormant.requests import ModelStore
from dormant.requests.history import accuracy_by_version
from dormant.requests.ledger import request_states
from dormant.service.db import ServiceDB
from dormant.service.tokens import Caller

MEASURED = (("test_acc", "test accuracy"), ("retain_acc", "retain accuracy"),
            ("forget_acc", "forget accuracy"), ("mia_auc", "membership-inference AUC"))
"""The before/after table: one number each for the model before the request and after."""


class LedgerRead:
    """The ledger read once for one answer: a list of a hundred requests costs one walk of the
    ledger, not several per request."""

    def __init__(self, store: ModelStore) -> None:
        self.store = store
        self.entries = store.ledger.entries()
        self.states = {s.request_id: s for s in request_states(self.entries)}
        self.finished = {e.request_id: e for e in self.entries if e.kind == "request-finished"}
        self._versions: dict[str, list] = {}

    def versions(self, name: str) -> list:
        if name not in self._versions:
            self._versions[name] = self.store.versions(name)
        return self._versions[name]

    def signoffs(self, name: str) -> dict[int, dict]:
        return {e.payload["version"]: {
            "decision": e.kind.removeprefix("version-"), "by": e.payload["by"],
            "comment": e.payload["comment"], "ledger_row": e.seq, "at": e.ts}
            for e in self.entries if e.model == name
            and e.kind in ("version-approved", "version-rejected")}


def request_view(store: ModelStore, db: ServiceDB, rid: str,
                 read: LedgerRead | None = None) -> dict | None:
    """A request as the service knows it (queued over HTTP) and as the ledger does (filed
    by any client); None when neither does."""
    read = read or LedgerRead(store)
    q = db.get(rid)
    state = read.states.get(rid)
    if q is None and state is None:
        return None
    if q is not None:
        b = q.body
        out = {"id": rid, "status": q.status, "stage": q.stage, "error": q.error,
               "model": b["model"], "ids": len(b["ids"]), "requester": b["requester"],
               "reason": b["reason"], "method": b.get("method"),
               "policy": b.get("policy") or "default", "callback_url": b.get("callback_url"),
               "created": q.created, "updated": q.updated, "filed_by": q.token_id,
               "source": "service"}
    else:
        p = state.started.payload
        status = {"unfinished": "running"}.get(state.status, state.status)
        out = {"id": rid, "status": status, "stage": None,
               "error": state.last.payload.get("error") if status == "failed" else None,
               "model": state.model, "ids": len(p["ids"]), "requester": p["requester"],
               "reason": p["reason"], "method": p["method"], "policy": None,
               "callback_url": None, "created": None, "updated": None, "filed_by": None,
               "source": "ledger"}
    out["ledger"] = None if state is None else state.status
    row = read.finished.get(rid)
    if row is not None:
        p = row.payload
        name = row.model
        v = next(x for x in read.versions(name) if x.version == p["to_version"])
        decided = read.signoffs(name).get(v.version)
        awaiting = decided is None and not v.promoted and p["verdict"] == "warn"
        out.update({
            "model_name": name, "verdict": p["verdict"], "promoted": v.promoted,
            "promotion_reason": p["promotion_reason"], "from_version": p["from_version"],
            "to_version": p["to_version"], "method": p["method"], "checks": p["checks"],
            "before_after": [{"measure": label, "before": p["measurements"]["before"].get(k),
                              "after": p["measurements"]["after"].get(k)}
                             for k, label in MEASURED],
            "signoff": decided or {"decision": "awaiting" if awaiting else "not needed"},
            "ledger_row": row.seq, "report": f"/requests/{rid}/report"})
    return out


def visible(view: dict, caller: Caller) -> bool:
    return caller.can("read_all") or view.get("filed_by") == caller.id


def requests_view(store: ModelStore, db: ServiceDB, caller: Caller, *,
                  status: str | None = None, model: str | None = None,
                  limit: int = 100) -> list[dict]:
    """The caller's requests (a reviewer's or admin's: every one, those filed from a shell
    included), newest first."""
    mine = None if caller.can("read_all") else caller.id
    read = LedgerRead(store)
    # the model is matched below, by name: a request names it NAME or NAME@VERSION
    queued = db.listed(token_id=mine, status=status, limit=limit if model is None else 10**6)
    ids = [q.id for q in queued]
    if mine is None:
        known = set(ids)
        ids += [r for r, s in reversed(read.states.items())
                if r not in known and (model is None or s.model == model)][:limit]
    out = [v for v in (request_view(store, db, i, read) for i in ids) if v is not None]
    return [v for v in out if (status is None or v["status"] == status)
            and (model is None or v["model"].partition("@")[0] == model)][:limit]


def models_view(store: ModelStore) -> list[dict]:
    out = []
    for name in store.models():
        cur = store.resolve(name)
        out.append({"name": name, "current_version": cur.version, "lineage": cur.lineage,
                    "versions": len(store.versions(name))})
    return out


def model_view(store: ModelStore, name: str) -> dict:
    """A model's versions (each with its status, test accuracy and drift since its lineage's
    root), the current one and how many ids it no longer holds."""
    cur = store.resolve(name)
    acc = accuracy_by_version(store.ledger, name)
    decided = LedgerRead(store).signoffs(name)
    finished = {e.request_id: e.payload for e in
                store.ledger.entries(kind="request-finished", model=name)}
    versions = []
    for v in store.versions(name):
        p = finished.get(v.request_id) if v.request_id else None
        if v.version == cur.version:
            status = "current"
        elif v.promoted:
            status = "superseded"
        elif v.version in decided:
            status = decided[v.version]["decision"]
        elif p is not None and p["verdict"] == "warn":
            status = "awaiting sign-off"
        else:
            status = "not promoted"
        a = acc.get(v.version, {})
        versions.append({"version": v.version, "status": status, "lineage": v.lineage,
                         "from_version": v.from_version, "request_id": v.request_id,
                         "verdict": None if p is None else p["verdict"],
                         "sha256": v.sha256, "test_acc": a.get("test_acc"),
                         "drift": a.get("drift"), "signoff": decided.get(v.version)})
    return {"name": name, "current_version": cur.version, "lineage": cur.lineage,
            "deleted_ids": len(store.deleted(cur)), "versions": versions}


def ledger_view(store: ModelStore, files: bool = False) -> dict:
    r = store.ledger.verify(store=store.root if files else None)
    return {"ok": r.ok, "rows": r.rows, "head": r.head, "bad_row": r.bad_seq,
            "problem": r.problem, "files_checked": r.files_checked, "note": r.note}
