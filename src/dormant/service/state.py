"""One running service: the engine it processes requests with, its queue database, its
worker and its callback sender, and every limit in one place."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

from dormant.requests import ModelStore
from dormant.requests.request import new_request_id
from dormant.service.callbacks import Backoff, Sender, event_body
from dormant.service.db import Outbox, Queued, ServiceDB
from dormant.service.tokens import Caller
from dormant.service.worker import Engine, Worker

log = logging.getLogger("dormant.service")


@dataclass(frozen=True)
class Limits:
    max_body: int = 1 << 20
    """Bytes of a JSON body: a request for 100,000 ids fits in well under 1 MiB."""
    max_upload: int = 2 << 30
    """Bytes of a model checkpoint an admin uploads (PUT /models/NAME)."""
    lock_wait: float = 30.0
    """Seconds a sign-off waits for the store's lock while a request runs, then 503."""
    backoff: Backoff = field(default_factory=Backoff)


class Service:
    def __init__(self, engine: Engine, limits: Limits = Limits()) -> None:
        self.engine = engine
        self.limits = limits
        ModelStore(engine.root)  # a folder that is no store is one line before the port opens
        self.db = ServiceDB(engine.root)
        self.sender = Sender(self.db, limits.backoff)
        self.worker = Worker(engine, self.db, self.event, self.sender.wake.set, self.public)

    def store(self) -> ModelStore:
        """A fresh view of the store for the calling thread (its ledger connection is its
        own)."""
        return ModelStore(self.engine.root)

    def public(self, text: str) -> str:
        """``text`` as a client may read it: the store's place on this machine left out."""
        for root in {str(self.engine.root.resolve()), str(self.engine.root)}:
            text = text.replace(root + "/", "").replace(root, "the store")
        return text

    def event(self, q: Queued, status: str, fields: dict, kind: str = "status"
              ) -> Outbox | None:
        """The callback reporting a change of ``q`` to its filer's ``callback_url``, if any."""
        url = q.body.get("callback_url")
        if not url:
            return None
        return url, q.token_id, event_body(kind, q.id, {
            "status": status, "model": q.body["model"], **fields})

    def file(self, caller: Caller, body: dict, idempotency_key: str | None
             ) -> tuple[Queued, bool]:
        """Queue a checked request, its ``pending`` callback with it (or find the one this
        caller filed under the same key), and wake the worker; ``True`` when it is new."""
        rid = new_request_id()
        url = body.get("callback_url")
        outbox = None if not url else (url, caller.id, event_body(
            "status", rid, {"status": "pending", "model": body["model"]}))
        q, new = self.db.enqueue(rid, caller.id, body, body["model"], idempotency_key, outbox)
        if new:
            self.sender.wake.set()
            self.worker.wake.set()
        return q, new

    def signed_off(self, q: Queued, fields: dict) -> None:
        self.db.post(q.id, self.event(q, "finished", fields, kind="signoff"))
        self.sender.wake.set()

    def start(self) -> None:
        self.sender.start()
        self.worker.start()
        log.info(json.dumps({"event": "service-started", "store": str(self.engine.root)}))

    def stop(self) -> None:
        """Stop taking work. A request still running is left to the next start, which resumes
        it (the ledger has its started rows)."""
        self.worker.stop()
        self.sender.stop()
        self.sender.join(timeout=2)
        self.worker.join(timeout=2)
