"""``kill -9`` of a running service (issue 24): the queued and running requests finish exactly
once after a restart, and the ledger verifies. Two kills: one mid-request (its started rows
in the ledger, no outcome), one after the ledger recorded the outcome but before the queue
did; a restart must neither lose the first nor redo the second."""

from __future__ import annotations

import sqlite3

import pytest
from service_helpers import (
    Receiver,
    client,
    file_request,
    make_token,
    served_store,
    until,
    wait_for,
)

from dormant.requests import Ledger
from dormant.service.local import LocalService

pytestmark = pytest.mark.slow


def _queue(store) -> dict[str, str]:
    with sqlite3.connect(store / "service.sqlite") as db:
        return dict(db.execute("SELECT id, status FROM requests").fetchall())


def test_kill_9_mid_request_and_after_the_ledger_then_restart_finishes_each_once(tmp_path):
    base = served_store(tmp_path)
    store, policy = base["store"], base["policy"]
    fides = make_token(store, "requester", "fides")
    receiver = Receiver()
    ledger = Ledger(store / "ledger.sqlite")

    def rows(kind, rid):
        return [e for e in ledger.entries(kind=kind) if e.request_id == rid]

    # 1: killed while the first request runs: its started rows are in, nothing else
    svc = LocalService(store, "--policy", str(policy),
                       env={"DORMANT_FAILPOINT": "hold:started"}).start()
    c = client(svc.url, fides)
    rids = [file_request(c, range(10 * i, 10 * i + 10), callback_url=receiver.url)
            for i in range(1, 4)]
    until(lambda: rows("request-started", rids[0]), "the first request to start")
    svc.kill()
    assert _queue(store) == {rids[0]: "running", rids[1]: "pending", rids[2]: "pending"}
    assert not ledger.entries(kind="request-finished")

    # 2: restarted, killed again once the ledger has the first one's outcome and the
    # queue does not
    svc = LocalService(store, "--policy", str(policy),
                       env={"DORMANT_FAILPOINT": "hold:service-finished"}).start()
    until(lambda: rows("request-finished", rids[0]), "the first request to finish")
    svc.kill()
    assert _queue(store)[rids[0]] == "running"

    # 3: restarted for good: everything finishes, each exactly once
    with LocalService(store, "--policy", str(policy)) as svc:
        c = client(svc.url, fides)
        done = [wait_for(c, rid) for rid in rids]
        verified = c.get("/ledger/verify", params={"files": True}).json()
        until(lambda: sum(1 for g in receiver.got if b'"finished"' in g["body"]) >= 3,
               "the finished callbacks")
    assert [d["status"] for d in done] == ["finished"] * 3
    for rid in rids:
        assert len(rows("request-started", rid)) == 1
        assert len(rows("request-finished", rid)) == 1
        assert not rows("request-failed", rid)
        assert [e["status"] for e in receiver.events(rid)].count("finished") == 1
    assert len(rows("request-resumed", rids[0])) == 1  # the killed run was resumed, not redone
    assert sorted(d["to_version"] for d in done) == [2, 3, 4]
    assert verified["ok"] and verified["files_checked"] >= 4
    receiver.close()


def test_a_killed_request_whose_model_moved_on_is_closed_once_as_failed(tmp_path):
    """Killed mid-request; while the service is down a shell promotes another deletion on
    the same model. The killed run cannot resume (its base is no longer current): the
    restart closes it as request-failed, once, and says why; nothing is promoted from it."""
    from cli_helpers import write_ids
    from test_store_integrity import forget_args

    from dormant.cli import main

    base = served_store(tmp_path)
    store, policy = base["store"], base["policy"]
    fides = make_token(store, "requester", "fides")
    ledger = Ledger(store / "ledger.sqlite")
    svc = LocalService(store, "--policy", str(policy),
                       env={"DORMANT_FAILPOINT": "hold:started"}).start()
    rid = file_request(client(svc.url, fides), range(10, 20))
    until(lambda: ledger.entries(request_id=rid), "the request to start")
    svc.kill()
    assert main(forget_args(store, write_ids(tmp_path / "b.ids", range(50, 60)), policy)) == 0
    with LocalService(store, "--policy", str(policy)) as svc:
        done = wait_for(client(svc.url, fides), rid)
    assert done["status"] == "failed" and "superseded: its base v1 is not v3" in done["error"]
    assert [e.kind for e in ledger.entries(request_id=rid)] == ["request-started",
                                                                "request-failed"]
    assert Ledger(store / "ledger.sqlite").verify(store=store).ok
