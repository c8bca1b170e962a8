"""Sign-off on a warned version (issue 24): ``dormant approve`` promotes a version a warning
kept back, ``dormant reject`` refuses it for good, and the ledger records who and why. A
sign-off never promotes a version that could serve what a later promoted request deleted.
On a digits store with every check level off, where each request's verdict is ``warn``
(insufficient evidence) and, without ``--accept-warnings``, nothing is promoted."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_helpers import copy_store, trained_store
from cli_helpers import write_ids as _ids
from test_store_integrity import PERMISSIVE, forget_args, one_error_line

from dormant.cli import main
from dormant.requests import Ledger, ModelStore


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> dict:
    return trained_store(tmp_path_factory.mktemp("signoff"), "digits", PERMISSIVE)


@pytest.fixture
def store(base, tmp_path) -> Path:
    return copy_store(base, tmp_path)


def _warned(store: Path, base: dict, ids: Path) -> str:
    """A request processed without --accept-warnings: its version is kept back."""
    args = [a for a in forget_args(store, ids, base["policy"]) if a != "--accept-warnings"]
    main(args)
    row = Ledger(store / "ledger.sqlite").entries(kind="request-finished")[-1]
    assert row.payload["verdict"] == "warn" and not row.payload["promoted"]
    return row.request_id


def _sign(store: Path, verb: str, rid: str, by: str = "dpo@example.org") -> int:
    return main([verb, "--store", str(store), "--request", rid, "--by", by, "--comment",
                 "reviewed the report"])


def test_approve_promotes_the_warned_version_and_the_ledger_shows_who(store, base, tmp_path,
                                                                      capsys):
    ids = range(100, 120)
    rid = _warned(store, base, _ids(tmp_path / "a.ids", ids))
    st = ModelStore(store)
    assert st.resolve("digits").version == 1
    assert _sign(store, "approve", rid) == 0
    current = st.resolve("digits")
    assert current.version == 2 and current.request_id == rid
    assert set(st.deleted(current)) == set(ids) == set(st.promoted_deletions("digits"))
    row = st.ledger.entries(kind="version-approved")[-1]
    assert row.payload["by"] == "dpo@example.org" and row.payload["requests"] == [rid]
    assert row.payload["comment"] == "reviewed the report" and row.request_id == rid
    assert main(["ledger", "verify", str(store)]) == 0
    capsys.readouterr()
    assert main(["ledger", "show", str(store)]) == 0
    out = capsys.readouterr().out
    shown = [ln for ln in out.splitlines() if "│ approved" in ln]
    assert len(shown) == 1 and "v2" in shown[0] and "│ yes" in shown[0]
    assert "dpo@example.org" in out
    assert _sign(store, "approve", rid) == 2  # decided once, for good
    assert "already approved by 'dpo@example.org'" in one_error_line(capsys.readouterr().err)


def test_a_rejected_version_stays_back_and_cannot_be_approved(store, base, tmp_path, capsys):
    rid = _warned(store, base, _ids(tmp_path / "a.ids", range(10, 30)))
    assert _sign(store, "reject", rid) == 0
    st = ModelStore(store)
    assert st.resolve("digits").version == 1 and not st.promoted_deletions("digits")
    assert st.ledger.entries(kind="version-rejected")[-1].payload["version"] == 2
    capsys.readouterr()
    assert _sign(store, "approve", rid) == 2
    assert "already rejected" in one_error_line(capsys.readouterr().err)


def test_no_approval_can_serve_what_a_later_request_deleted(store, base, tmp_path, capsys):
    """A kept-back v2 (ids A) and then a promoted v3 built on v1 (ids B): approving v2 now
    would make current a version that holds B. Refused, with nothing recorded."""
    rid = _warned(store, base, _ids(tmp_path / "a.ids", range(300, 320)))
    assert main(forget_args(store, _ids(tmp_path / "b.ids", range(400, 420)),
                            base["policy"])) == 0
    st = ModelStore(store)
    assert st.resolve("digits").version == 3
    rows = len(st.ledger.entries())
    capsys.readouterr()
    assert _sign(store, "approve", rid) == 2
    assert "v3 is current now" in one_error_line(capsys.readouterr().err)
    assert len(st.ledger.entries()) == rows and st.resolve("digits").version == 3


@pytest.mark.parametrize("verb,args,message", [
    ("approve", ["--request", "nope", "--by", "x", "--comment", "y"], "no finished request"),
    ("approve", ["--request", "nope", "--by", " ", "--comment", "y"], "--by is empty"),
    ("reject", ["--request", "nope", "--by", "x", "--comment", ""], "--comment is empty"),
])
def test_bad_sign_offs_are_one_line(store, capsys, verb, args, message):
    assert main([verb, "--store", str(store), *args]) == 2
    assert message in one_error_line(capsys.readouterr().err)


def test_nothing_is_built_on_a_rejected_version(store, base, tmp_path, capsys):
    """A rejected v2 cannot reach service through a child: a request on digits@2 is refused
    at planning, with nothing recorded."""
    rid = _warned(store, base, _ids(tmp_path / "a.ids", range(500, 520)))
    assert _sign(store, "reject", rid[:8]) == 0  # the start of the id, as ledger show prints
    rows = len(Ledger(store / "ledger.sqlite").entries())
    args = forget_args(store, _ids(tmp_path / "b.ids", range(600, 620)), base["policy"])
    args[args.index("digits")] = "digits@2"
    capsys.readouterr()
    assert main(args) == 2
    assert "rejected at ledger row" in one_error_line(capsys.readouterr().err)
    assert len(Ledger(store / "ledger.sqlite").entries()) == rows


def test_a_superseded_or_changed_version_is_not_signed_off(store, base, tmp_path, capsys):
    """v2 kept back, then v3 built on it and promoted: v2 is superseded, neither approved
    nor rejected. A kept-back version whose checkpoint changed is not approved."""
    rid = _warned(store, base, _ids(tmp_path / "a.ids", range(700, 720)))
    args = forget_args(store, _ids(tmp_path / "b.ids", range(800, 820)), base["policy"])
    args[args.index("digits")] = "digits@2"
    assert main(args) == 0
    capsys.readouterr()
    for verb in ("approve", "reject"):
        assert _sign(store, verb, rid) == 2
        assert "superseded: v3, built on it" in one_error_line(capsys.readouterr().err)
    rid4 = _warned(store, base, _ids(tmp_path / "c.ids", range(900, 920)))
    st = ModelStore(store)
    ckpt = store / st.resolve("digits", 4).rel
    ckpt.write_bytes(ckpt.read_bytes()[:-8] + b"\0" * 8)
    capsys.readouterr()
    assert _sign(store, "approve", rid4) == 2
    assert "the ledger recorded" in one_error_line(capsys.readouterr().err)
    assert st.resolve("digits").version == 3
