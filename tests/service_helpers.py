"""A digits store served by a real ``dormant serve`` on the loopback, tokens for each role,
and a callback receiver: what the service, dashboard and crash tests share."""

from __future__ import annotations

import http.server
import json
import threading
import time
from pathlib import Path

import httpx
from cli_helpers import trained_store
from test_store_integrity import PERMISSIVE

from dormant.cli import main


class Receiver:
    """A privacy system's callback endpoint on the loopback: keeps every POST it gets."""

    def __init__(self) -> None:
        got = self.got = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                got.append({"headers": dict(self.headers), "body": body})
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def events(self, rid: str) -> list[dict]:
        return [json.loads(g["body"]) for g in self.got if json.loads(g["body"])["request_id"]
                == rid]

    def close(self) -> None:
        self.server.shutdown()


def make_token(store: Path, role: str, name: str) -> dict:
    """A token for ``role``, as ``dormant token create`` makes it."""
    from dormant.service.db import ServiceDB
    from dormant.service.tokens import create_token

    text, t = create_token(ServiceDB(store), role, name)
    return {"token": text, "secret": t.secret, "name": name, "id": t.id}


def cli_token(store: Path, role: str, name: str, capsys) -> dict:
    """``dormant token create``: the token and its callback secret, as printed."""
    capsys.readouterr()
    assert main(["token", "create", "--store", str(store), "--role", role, "--name", name]) == 0
    out = capsys.readouterr().out
    token = next(ln for ln in out.splitlines() if ln.startswith("dmt_"))
    secret = out.split("callback secret")[1].split(": ", 1)[1].split()[0]
    return {"token": token, "secret": secret, "name": name, "id": token.split("_")[1]}


def served_store(root: Path) -> dict:
    """A digits store (model ``digits`` v1) and the permissive policy: every request's
    verdict is ``warn`` (insufficient evidence), so its version waits for a sign-off."""
    return trained_store(root, "digits", PERMISSIVE)


def client(base_url: str, token: dict | None) -> httpx.Client:
    headers = {} if token is None else {"Authorization": f"Bearer {token['token']}"}
    return httpx.Client(base_url=base_url, headers=headers, timeout=30)


def file_request(c: httpx.Client, ids, **more) -> str:
    r = c.post("/requests", json={"model": "digits", "ids": list(ids), "requester": "alice",
                                  "reason": "GDPR art. 17", **more})
    assert r.status_code == 202, r.text
    return r.json()["id"]


def until(cond, what: str, timeout: float = 60) -> None:
    """Poll ``cond`` until it holds; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def wait_for(c: httpx.Client, rid: str, statuses=("finished", "failed", "denied"),
             timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = c.get(f"/requests/{rid}")
        assert r.status_code == 200, r.text
        if r.json()["status"] in statuses:
            return r.json()
        time.sleep(0.1)
    raise AssertionError(f"request {rid} did not reach {statuses} in {timeout} s: {r.json()}")
