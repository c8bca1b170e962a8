"""``dormant serve`` end to end (issue 24): a real uvicorn process on the loopback, a digits
store, tokens of each role, and a callback receiver. Every request here is processed by the
real engine; its verdict is ``warn`` (the permissive policy's insufficient evidence), so its
version waits for a reviewer's sign-off."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest
from service_helpers import (
    Receiver,
    cli_token,
    client,
    file_request,
    make_token,
    served_store,
    until,
    wait_for,
)

from dormant.cli import main
from dormant.requests import Ledger
from dormant.service.local import LocalService

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def svc(tmp_path_factory):
    base = served_store(tmp_path_factory.mktemp("service"))
    store = base["store"]
    tokens = {who: make_token(store, role, who) for who, role in (
        ("fides", "requester"), ("ketch", "requester"), ("dpo@example.org", "reviewer"),
        ("ops", "admin"))}
    receiver = Receiver()
    with LocalService(store, "--policy", str(base["policy"])) as running:
        yield {"url": running.url, "store": store, "tokens": tokens, "receiver": receiver,
               "policy": base["policy"]}
    receiver.close()


def as_(svc, who):
    return client(svc["url"], None if who is None else svc["tokens"][who])


def test_a_request_is_filed_processed_and_verified_and_each_change_is_called_back(svc):
    fides = as_(svc, "fides")
    rid = file_request(fides, range(100, 120), callback_url=svc["receiver"].url)
    done = wait_for(fides, rid)
    assert done["status"] == "finished" and done["verdict"] == "warn"
    assert not done["promoted"] and done["signoff"] == {"decision": "awaiting"}
    assert [c["name"] for c in done["checks"]][:2] == ["retain_drop", "test_drop"]
    assert {m["measure"] for m in done["before_after"]} >= {"test accuracy", "forget accuracy"}
    # the ledger names the request by the id the service answered with
    rows = Ledger(svc["store"] / "ledger.sqlite").entries(request_id=rid)
    assert [e.kind for e in rows] == ["request-started", "request-finished"]
    assert rows[0].payload["ids"] == list(range(100, 120))
    report = fides.get(f"/requests/{rid}/report")
    assert report.status_code == 200 and "<html" in report.text.lower()
    verified = fides.get("/ledger/verify", params={"files": True}).json()
    assert verified["ok"] and verified["files_checked"] >= 2
    # every status change reached the receiver, in order, signed with fides's secret
    until(lambda: len(svc["receiver"].events(rid)) >= 3, "three callbacks")
    got = [g for g in svc["receiver"].got if json.loads(g["body"])["request_id"] == rid]
    assert [json.loads(g["body"])["status"] for g in got] == ["pending", "running",
                                                              "finished"]
    secret = svc["tokens"]["fides"]["secret"]
    for g in got:  # what a receiver computes, independently of the service's own code
        mac = hmac.new(secret.encode(), g["body"], hashlib.sha256).hexdigest()
        assert g["headers"]["X-Dormant-Signature"] == f"sha256={mac}"
    assert json.loads(got[-1]["body"])["verdict"] == "warn"


def test_a_reviewer_approves_a_warned_version_and_the_ledger_shows_who(svc):
    fides, dpo = as_(svc, "fides"), as_(svc, "dpo@example.org")
    rid = file_request(fides, range(200, 220), callback_url=svc["receiver"].url)
    done = wait_for(fides, rid)
    assert done["signoff"]["decision"] == "awaiting"
    before = dpo.get("/models/digits").json()["current_version"]
    r = dpo.post(f"/requests/{rid}/approve", json={"comment": "checked the report"})
    assert r.status_code == 200, r.text
    dpo_id = svc["tokens"]["dpo@example.org"]["id"]
    assert r.json()["promoted"]
    assert r.json()["signoff"]["by"] == f"dpo@example.org (token {dpo_id})"
    model = dpo.get("/models/digits").json()
    assert model["current_version"] == done["to_version"] != before
    row = Ledger(svc["store"] / "ledger.sqlite").entries(kind="version-approved")[-1]
    assert row.request_id == rid and row.payload["by"] == f"dpo@example.org (token {dpo_id})"
    assert row.payload["comment"] == "checked the report"
    until(lambda: any(e["event"] == "signoff" for e in svc["receiver"].events(rid)),
          "the sign-off callback")
    told = next(e for e in svc["receiver"].events(rid) if e["event"] == "signoff")
    assert told["signoff"] == "approved" and told["promoted"] is True
    assert told["by"] == "dpo@example.org"
    again = dpo.post(f"/requests/{rid}/approve", json={"comment": "twice"})
    assert again.status_code == 400 and "already approved" in again.json()["error"]
    assert dpo.get("/ledger/verify", params={"files": True}).json()["ok"]


def test_a_requester_cannot_approve_read_anothers_request_or_add_a_model(svc):
    fides, ketch = as_(svc, "fides"), as_(svc, "ketch")
    theirs = file_request(ketch, range(300, 310))
    mine = file_request(fides, range(310, 320))
    wait_for(fides, mine)
    assert fides.get(f"/requests/{theirs}").status_code == 404
    assert fides.get(f"/requests/{theirs}/report").status_code == 404
    listed = {r["id"] for r in fides.get("/requests").json()["requests"]}
    assert mine in listed and theirs not in listed
    r = fides.post(f"/requests/{mine}/approve", json={"comment": "mine"})
    assert r.status_code == 403 and "sign_off" in r.json()["error"]
    ckpt = (svc["store"] / "models" / "digits" / "v1.safetensors").read_bytes()
    r = fides.put("/models/other", content=ckpt,
                  headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 403 and "add_model" in r.json()["error"]
    assert fides.post("/tokens", json={"role": "admin", "name": "me"}).status_code == 403
    # an admin can: the upload becomes a model in the store, in the ledger
    ops = as_(svc, "ops")
    r = ops.put("/models/other", content=ckpt,
                headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 400 and "?arch=" in r.json()["error"]  # plain weights: which?
    assert "upload" in r.json()["error"] and str(svc["store"]) not in r.json()["error"]
    r = ops.put("/models/other", content=ckpt, params={"arch": "mlp"},
                headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 201, r.text
    assert Ledger(svc["store"] / "ledger.sqlite").entries(kind="model-added")[-1].model == \
        "other"
    wait_for(ketch, theirs)


def test_an_idempotency_key_gives_back_the_first_request(svc):
    fides = as_(svc, "fides")
    body = {"model": "digits", "ids": [500, 501], "requester": "a", "reason": "b"}
    key = {"Idempotency-Key": "DSR-2291"}
    first = fides.post("/requests", json=body, headers=key)
    again = fides.post("/requests", json=body, headers=key)
    assert first.status_code == 202 and again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    other = fides.post("/requests", json={**body, "ids": [502]}, headers=key)
    assert other.status_code == 409 and first.json()["id"] in other.json()["error"]
    # another token's same key is its own
    assert as_(svc, "ketch").post("/requests", json=body, headers=key).status_code == 202
    wait_for(fides, first.json()["id"])


def test_a_revoked_token_is_refused(svc, capsys):
    made = cli_token(svc["store"], "requester", "onetrust", capsys)
    c = client(svc["url"], made)
    assert c.get("/models").status_code == 200
    assert main(["token", "revoke", "--store", str(svc["store"]), made["id"]]) == 0
    r = c.get("/models")
    assert r.status_code == 401 and "revoked" in r.json()["error"]
    # and over the API, by an admin
    ops = as_(svc, "ops")
    new = ops.post("/tokens", json={"role": "reviewer", "name": "auditor"}).json()
    c = client(svc["url"], new)
    assert c.get("/requests").status_code == 200
    assert ops.delete(f"/tokens/{new['id']}").status_code == 200
    assert c.get("/requests").status_code == 401


BAD = [
    ("no token", None, "post", "/requests", {"json": {"model": "digits"}}, 401),
    ("a made-up token", "dmt_000000000000_" + "x" * 43, "get", "/models", {}, 401),
    ("malformed JSON", "fides", "post", "/requests",
     {"content": b'{"model": "digits", "ids": [1, 2', "headers": {
         "Content-Type": "application/json"}}, 400),
    ("not an object", "fides", "post", "/requests", {"json": [1, 2]}, 422),
    ("ids of the wrong type", "fides", "post", "/requests",
     {"json": {"model": "digits", "ids": "all", "requester": "a", "reason": "b"}}, 422),
    ("an unknown field", "fides", "post", "/requests",
     {"json": {"model": "digits", "ids": [1], "requester": "a", "reason": "b",
               "path": "/etc/passwd"}}, 422),
    ("an id out of range", "fides", "post", "/requests",
     {"json": {"model": "digits", "ids": [10 ** 9], "requester": "a", "reason": "b"}}, 400),
    ("an id twice", "fides", "post", "/requests",
     {"json": {"model": "digits", "ids": [3, 3], "requester": "a", "reason": "b"}}, 400),
    ("an unknown model", "fides", "post", "/requests",
     {"json": {"model": "nope", "ids": [1], "requester": "a", "reason": "b"}}, 400),
    ("an empty reason", "fides", "post", "/requests",
     {"json": {"model": "digits", "ids": [1], "requester": "a", "reason": "  "}}, 400),
    ("an unknown policy", "fides", "post", "/requests",
     {"json": {"model": "digits", "ids": [1], "requester": "a", "reason": "b",
               "policy": "lenient"}}, 400),
    ("a file callback", "fides", "post", "/requests",
     {"json": {"model": "digits", "ids": [1], "requester": "a", "reason": "b",
               "callback_url": "file:///etc/passwd"}}, 400),
    ("an unknown method", "fides", "post", "/requests",
     {"json": {"model": "digits", "ids": [1], "requester": "a", "reason": "b",
               "method": "magic"}}, 400),
    ("an oversize body", "fides", "post", "/requests",
     {"content": b'{"ids": [' + b"1," * 600_000 + b"1]}", "headers": {
         "Content-Type": "application/json"}}, 413),
    ("an oversize body without a length", "fides", "post", "/requests",
     {"content": iter([b'{"ids": [', b"1," * 600_000, b"1]}"]), "headers": {
         "Content-Type": "application/json"}}, 413),
    ("an unknown request id", "fides", "get", "/requests/0123456789abcdef", {}, 404),
    ("a request id that is no id", "fides", "get", "/requests/..%2F..%2Fetc", {}, 404),
    ("a request id of other letters", "fides", "get", "/requests/ZZZZ", {}, 404),
    ("an unknown model name", "fides", "get", "/models/nope", {}, 400),
    ("an unknown status filter", "fides", "get", "/requests", {"params": {"status": "x"}},
     400),
    ("a sign-off of an unknown request", "dpo@example.org", "post",
     "/requests/0123456789abcdef/approve", {"json": {"comment": "ok"}}, 404),
    ("a sign-off without a comment", "dpo@example.org", "post",
     "/requests/0123456789abcdef/reject", {"json": {}}, 422),
    ("an unknown route", "fides", "get", "/nowhere", {}, 404),
]


@pytest.mark.parametrize("case", BAD, ids=[b[0] for b in BAD])
def test_bad_input_gets_a_4xx_with_one_line_and_no_traceback(svc, case):
    _, who, verb, path, kwargs, status = case
    c = (client(svc["url"], {"token": who}) if who and who.startswith("dmt_")
         else as_(svc, who))
    r = getattr(c, verb)(path, **kwargs)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error and "\n" not in error and "Traceback" not in r.text and 'File "' not in r.text
    assert str(svc["store"]) not in r.text and "/tmp" not in r.text  # no server path


def test_every_write_and_refusal_is_logged(svc):
    as_(svc, "fides").post("/requests/0123456789abcdef/approve", json={"comment": "x"})
    lines = [json.loads(ln.split(" ", 2)[2]) for ln in
             (svc["store"] / "service.log").read_text().splitlines() if '"event": "http"' in ln]
    fides = svc["tokens"]["fides"]["id"]
    assert any(e["method"] == "POST" and e["status"] == 202 and e["token"] == fides
               for e in lines)
    assert any(e["status"] == 403 and e["token"] == fides and "sign_off" in e["error"]
               for e in lines)
    assert any(e["status"] == 401 and e["token"] is None for e in lines)
    assert any(e["status"] == 413 for e in lines)


def test_serve_and_token_refuse_bad_input_in_one_line(svc, tmp_path, capsys):
    store = str(svc["store"])
    cases = [
        (["serve", "--store", store], "another dormant serve is running"),
        (["serve", "--store", str(tmp_path / "nowhere")], "nowhere"),
        (["token", "create", "--store", store, "--role", "root", "--name", "x"],
         "role 'root' is not one of"),
        (["token", "create", "--store", store, "--role", "admin", "--name", "a\nb"],
         "is not allowed"),
        (["token", "revoke", "--store", store, "000000000000"], "no token"),
        (["token", "create", "--store", store, "--role", "reviewer", "--name", "fides"],
         "is named 'fides' already"),
    ]
    for args, message in cases:
        capsys.readouterr()
        assert main(args) == 2, args
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, (args, err)


def test_serve_refuses_a_taken_port_or_a_bad_policy_in_one_line(tmp_path, capsys):
    import socket

    store = str(served_store(tmp_path)["store"])
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        for args, message in [
            (["--port", str(taken.getsockname()[1])], "cannot listen on"),
            (["--port", "0", "--policy", "strict="], "give FILE or NAME=FILE"),
            (["--port", "0", "--policy", f"strict={tmp_path / 'none.yaml'}"], "none.yaml"),
        ]:
            capsys.readouterr()
            assert main(["serve", "--store", store, *args]) == 2, args
            err = capsys.readouterr().err.strip()
            assert len(err.splitlines()) == 1 and message in err, (args, err)
