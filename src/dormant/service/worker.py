"""The service's worker: takes the queue's requests one at a time, oldest first, and runs each
through the same engine as ``dormant forget`` (``process_request``), under the store's lock.

Exactly once, across ``kill -9``: the queue names each request by the id its ledger rows
will carry. On start the worker first settles every request the queue says was running: the
ledger decides. One the ledger finished or failed takes that outcome; any other goes back to
the head of the queue and its rerun resumes the killed run (``requests.plan``), so no request
is done twice and none is lost."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from dormant.data import Dataset
from dormant.errors import DormantError
from dormant.failpoints import kill_point
from dormant.requests import ModelStore, Policy, Request, RequestFailed, process_request
from dormant.requests.store import parse_ref
from dormant.service.db import Queued, ServiceDB

log = logging.getLogger("dormant.service")


@dataclass(frozen=True)
class Engine:
    """What the worker runs requests with: the store, the dataset its models were trained on,
    the named policies a request may choose from, and the device."""

    root: Path
    dataset: Dataset
    policies: dict[str, Policy]
    device: str = "auto"


def ledger_state(store: ModelStore, rid: str) -> str | None:
    """``finished``, ``failed``, ``unfinished`` or None (no row) as the ledger says."""
    for s in store.ledger.requests():
        if s.request_id == rid:
            return s.status
    return None


Event = Callable[[Queued, str, dict], "tuple[str, str, str] | None"]
"""``event(q, status, fields)``: the callback a status change queues (url, token id, body),
written in the same transaction as the change; None when the request has no callback."""


class Worker(threading.Thread):
    def __init__(self, engine: Engine, db: ServiceDB, event: Event,
                 sent: Callable[[], None], public: Callable[[str], str]) -> None:
        super().__init__(name="dormant-worker", daemon=True)
        self.engine = engine
        self.db = db
        self.event = event
        self.sent = sent
        self.public = public
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.current: str | None = None

    def stop(self) -> None:
        self.stopping.set()
        self.wake.set()

    def run(self) -> None:
        self.recover()
        while not self.stopping.is_set():
            q = self.db.next_pending()
            if q is None:
                self.wake.wait(0.5)
                self.wake.clear()
                continue
            self.current = q.id
            try:
                self.process(q)
            finally:
                self.current = None

    def recover(self) -> None:
        """Settle the requests a killed service left running, by the ledger."""
        store = ModelStore(self.engine.root)
        for q in self.db.with_status("running"):
            state = ledger_state(store, q.id)
            if state in ("finished", "failed"):
                self.settle(q, None)
            else:  # not started, or killed mid-way: its rerun resumes it
                self.db.set_status(q.id, "pending")
                log.info(json.dumps({"event": "request-requeued", "request_id": q.id,
                                     "ledger": state}))

    def process(self, q: Queued) -> None:
        e = self.engine
        self._set(q, "running", {})
        b = q.body
        policy = e.policies.get(b.get("policy") or "default")
        if policy is None:  # filed before a restart that dropped the policy it names
            self._set(q, "denied", {"error": f"policy {b['policy']!r} is not one this "
                                             f"service has now ({', '.join(e.policies)}); "
                                             "file the request again"})
            return
        error: BaseException | None = None
        try:
            name, version = parse_ref(b["model"])
            req = Request(name, torch.tensor(b["ids"], dtype=torch.long), b["requester"],
                          b["reason"], version, b.get("method"), b.get("hparams") or {},
                          request_id=q.id)
            process_request(ModelStore(e.root), e.dataset, req, policy, device=e.device,
                            on_stage=lambda s: self.db.set_stage(q.id, s))
            kill_point("service-finished")  # the ledger has the outcome, the queue not yet
        except Exception as err:  # noqa: BLE001 - every end is settled by the ledger below
            error = err
            if not isinstance(err, (DormantError, RequestFailed)):
                log.error(json.dumps({"event": "worker-error", "request_id": q.id}),
                          exc_info=err)
        self.settle(q, error)

    def settle(self, q: Queued, error: BaseException | None) -> None:
        """The request's end as the ledger has it: finished or failed by its rows; with no
        row, denied (refused before any work) when the engine said why in one line, else
        failed."""
        store = ModelStore(self.engine.root)
        state = ledger_state(store, q.id)
        if state == "finished":
            self._set(q, "finished", finished_fields(store, q.id))
        elif state == "failed":
            self._set(q, "failed", {"error": failed_error(store, q.id)})
        elif state is None and isinstance(error, DormantError):
            self._set(q, "denied", {"error": str(error)})
        else:
            why = "the service failed to process it; its log has the details" \
                if error is None or not isinstance(error, (DormantError, RequestFailed)) \
                else str(error)
            self._set(q, "failed", {"error": why})

    def _set(self, q: Queued, status: str, fields: dict) -> None:
        if "error" in fields:
            fields = {**fields, "error": self.public(fields["error"])}
        self.db.set_status(q.id, status, error=fields.get("error"),
                           outbox=self.event(q, status, fields))
        self.sent()
        if status != "running":
            log.info(json.dumps({"event": f"request-{status}", "request_id": q.id,
                                 **fields}))


def finished_row(store: ModelStore, rid: str):
    rows = store.ledger.entries(kind="request-finished", request_id=rid)
    return rows[-1] if rows else None


def finished_fields(store: ModelStore, rid: str) -> dict:
    """What a callback and a status line say of a finished request: its verdict, versions and
    whether the new version is in use."""
    p = finished_row(store, rid).payload
    return {"verdict": p["verdict"], "promoted": bool(p["promoted"]),
            "from_version": p["from_version"], "to_version": p["to_version"]}


def failed_error(store: ModelStore, rid: str) -> str:
    rows = store.ledger.entries(kind="request-failed", request_id=rid)
    return str(rows[-1].payload.get("error", "")) if rows else ""
