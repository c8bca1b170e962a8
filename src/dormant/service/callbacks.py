"""Callbacks: each status change of a request is POSTed to the ``callback_url`` it was filed
with, signed, and retried with exponential backoff until the receiver answers 2xx.

The events wait in ``service.sqlite``'s outbox, so a restart goes on delivering them. A
receiver gets a request's events in order (the next waits for the one before), and each
carries its own id, so a receiver that saw one twice (a reply lost on the way back) can drop
the copy. Headers: ``X-Dormant-Signature: sha256=HEX`` (HMAC-SHA256 of the raw body under
the filing token's callback secret), ``X-Dormant-Event`` and ``X-Dormant-Delivery``."""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

from dormant.service.db import ServiceDB
from dormant.service.tokens import sign

log = logging.getLogger("dormant.service")


@dataclass(frozen=True)
class Backoff:
    """Retry schedule: ``first`` seconds after the first failure, doubling, at most ``most``
    apart, for ``attempts`` tries in all (the defaults wait 5,822 s, an hour and a half, in
    all: long enough for a receiver's deploy or restart), then the event is dead and
    logged."""

    first: float = 2.0
    most: float = 600.0
    attempts: int = 18
    timeout: float = 10.0  # seconds a receiver has to answer one try

    def after(self, tries: int) -> float:
        return min(self.first * 2 ** (tries - 1), self.most)


def event_body(event: str, rid: str, fields: dict) -> str:
    return json.dumps({"event": event, "request_id": rid, "at": time.time(), **fields},
                      sort_keys=True, separators=(",", ":"))


class _Refuse(urllib.request.HTTPRedirectHandler):
    """A redirect is a failed try: following it would turn the POST into a GET, and could
    send the request's news somewhere its filer never named."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


_NO_REDIRECTS = urllib.request.build_opener(_Refuse)


class Sender(threading.Thread):
    """Delivers what is due in the outbox, oldest first, until stopped."""

    def __init__(self, db: ServiceDB, backoff: Backoff) -> None:
        super().__init__(name="dormant-callbacks", daemon=True)
        self.db = db
        self.backoff = backoff
        self.wake = threading.Event()
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                sent = self.send_due()
            except Exception:  # noqa: BLE001 - the sender must outlive a bad row or a locked db
                log.exception("callback sender: a pass over the outbox failed")
                sent = 0
            if not sent:
                self.wake.wait(0.5)
                self.wake.clear()

    def stop(self) -> None:
        self.stopping.set()
        self.wake.set()

    def send_due(self) -> int:
        rows = self.db.due(time.time())
        for r in rows:
            token = self.db.token(r["token_id"])
            body = r["body"].encode()
            tries = r["attempts"] + 1
            try:
                self._post(r["url"], body, token.secret if token else "", r["id"],
                           json.loads(r["body"])["event"])
            except Exception as e:  # noqa: BLE001 - any failure is a try to repeat
                dead = tries >= self.backoff.attempts
                self.db.retry(r["id"], tries, time.time() + self.backoff.after(tries),
                              str(e), dead)
                log.warning(json.dumps({"event": "callback-" + ("dead" if dead else "retry"),
                                        "request_id": r["request_id"], "delivery": r["id"],
                                        "attempt": tries, "error": str(e)[:200]}))
                continue
            self.db.delivered(r["id"], tries)
        return len(rows)

    def _post(self, url: str, body: bytes, secret: str, delivery: int, event: str) -> None:
        req = urllib.request.Request(url, data=body, method="POST", headers={
            "Content-Type": "application/json", "User-Agent": "dormant-service",
            "X-Dormant-Signature": sign(secret, body), "X-Dormant-Event": event,
            "X-Dormant-Delivery": str(delivery)})
        try:
            with _NO_REDIRECTS.open(req, timeout=self.backoff.timeout) as resp:
                status = resp.status
        except urllib.error.HTTPError as e:
            status = e.code
        if not 200 <= status < 300:
            raise RuntimeError(f"the receiver answered HTTP {status}")
