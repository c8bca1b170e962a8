"""Callback delivery (issue 24) without a service: a receiver that fails, then redirects, then
answers is tried three times, the redirect is not followed, and the event is delivered once,
signed; one that always fails is given up after the schedule's tries, in order per request."""

from __future__ import annotations

import hashlib
import hmac
import http.server
import threading
import time

from dormant.service.callbacks import Backoff, Sender, event_body
from dormant.service.db import ServiceDB
from dormant.service.tokens import create_token


class Scripted:
    """Answers each POST with the next status of ``script`` (then 204); records everything."""

    def __init__(self, script: list[int]) -> None:
        seen = self.seen = []
        answers = iter(script)

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                seen.append((self.command, self.path, dict(self.headers), body))
                code = next(answers, 204)
                self.send_response(code)
                if code == 302:
                    self.send_header("Location", "/elsewhere")
                self.end_headers()

            do_POST = do_GET = _answer  # noqa: N815 - http.server's names

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"


def _drain(sender: Sender, db: ServiceDB, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while any(r["state"] == "pending" for r in db.outbox()):
        assert time.monotonic() < deadline
        sender.send_due()
        time.sleep(0.02)


def test_a_failing_then_redirecting_receiver_gets_the_event_once_signed(tmp_path):
    db = ServiceDB(tmp_path)
    _, token = create_token(db, "requester", "fides")
    rx = Scripted([500, 302])
    body = event_body("status", "0123456789abcdef", {"status": "finished"})
    db.post("0123456789abcdef", (rx.url, token.id, body))
    _drain(Sender(db, Backoff(first=0.01, attempts=5, timeout=2)), db)
    row = db.outbox()[0]
    assert row["state"] == "delivered" and row["attempts"] == 3
    assert [(m, p) for m, p, _, _ in rx.seen] == [("POST", "/hook")] * 3  # never /elsewhere
    mac = hmac.new(token.secret.encode(), body.encode(), hashlib.sha256).hexdigest()
    assert all(h["X-Dormant-Signature"] == f"sha256={mac}" for _, _, h, _ in rx.seen)
    rx.server.shutdown()


def test_an_unreachable_receiver_is_given_up_after_the_schedule_in_order(tmp_path):
    db = ServiceDB(tmp_path)
    _, token = create_token(db, "requester", "fides")
    rx = Scripted([500] * 100)
    for status in ("pending", "running"):
        db.post("0123456789abcdef", (rx.url, token.id,
                                     event_body("status", "0123456789abcdef",
                                                {"status": status})))
    _drain(Sender(db, Backoff(first=0.01, attempts=3, timeout=2)), db)
    rows = db.outbox()
    assert [r["state"] for r in rows] == ["dead", "dead"]
    assert [r["attempts"] for r in rows] == [3, 3]
    # the second event waited for the first: its tries all came after the first's last
    bodies = [b for _, _, _, b in rx.seen]
    assert [b"pending" in b for b in bodies] == [True] * 3 + [False] * 3
    rx.server.shutdown()
