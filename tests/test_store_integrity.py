"""Issue 21: a store that never loses a deletion. Each sequence that once broke the store's
promise is replayed here through the real CLI on a digits store, and the store must hold:
the current version holds every promoted deletion, nothing writes inside the store but the
store, nothing is appended to a chain that does not verify, and a request that cannot
succeed is refused, or recorded as failed, in one line with nothing half-written."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cli_helpers import copy_store, trained_store
from cli_helpers import run_cli as _cli
from cli_helpers import write_ids as _ids

from dormant.cli import main
from dormant.requests import Ledger, ModelStore

CHECKS = ("retain_drop", "test_drop", "forget_gap", "mia_auc", "unchanged", "excess",
          "excess_leaked", "nc_shrink", "uap_jump")
PERMISSIVE = "".join(f"{c}: {{warn: null, fail: null}}\n" for c in CHECKS) + """\
budget: {relearn_steps: 10, relearn_lr: 1.0e-3, eval_every: 5, leaked_k: 2,
         defender_images: 40, nc: {epochs: 1, batch_size: 20}, uap: {steps: 3},
         mia_size: 100}
"""
"""Every level off and a tiny budget: what these tests judge is the store, not the checks;
with --accept-warnings every request here is promoted (its insufficient-evidence warnings
accepted), so each sequence has promoted deletions to lose."""


def forget_args(store: Path, ids: Path, policy: Path, *extra: str) -> list[str]:
    return ["forget", "--store", str(store), "--model", "digits", "--ids", str(ids),
            "--requester", "alice", "--reason", "gdpr art. 17", "--policy", str(policy),
            "--device", "cpu", "--accept-warnings", *extra]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> dict:
    return trained_store(tmp_path_factory.mktemp("integrity"), "digits", PERMISSIVE)


@pytest.fixture
def store(base, tmp_path) -> Path:
    return copy_store(base, tmp_path)


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != ".lock"}


def held(store: Path) -> set[int]:
    """The ids the current version was made without, by the ledger's own account."""
    st = ModelStore(store)
    return set(st.deleted(st.resolve("digits")))


def one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.slow
def test_a_resumed_request_never_undoes_a_later_deletion(store, base, tmp_path, capsys):
    a = _ids(tmp_path / "a.ids", range(100, 130))
    b = _ids(tmp_path / "b.ids", range(200, 230))
    killed = _cli(*forget_args(store, a, base["policy"]), env={"DORMANT_FAILPOINT": "started"})
    assert killed.returncode == -9, killed.stderr
    book = Ledger(store / "ledger.sqlite")
    rid_a = book.entries(kind="request-started")[-1].request_id
    assert main(forget_args(store, b, base["policy"])) == 0
    st = ModelStore(store)
    assert st.resolve("digits").version == 3 and held(store) == set(range(200, 230))
    # A's rerun as `ledger verify` advises it, on v1: refused, closed, and B stays deleted
    capsys.readouterr()
    n = len(book)
    assert main(forget_args(store, a, base["policy"], "--model", "digits@1")) == 2
    line = one_error_line(capsys.readouterr().err)
    assert rid_a in line and "cannot resume" in line and "closed as request-failed" in line
    closed = book.entries()[-1]
    assert len(book) == n + 1 and closed.kind == "request-failed"
    assert closed.request_id == rid_a and closed.payload["error"].startswith("superseded")
    assert st.resolve("digits").version == 3 and held(store) == set(range(200, 230))
    assert not (store / "models" / "digits" / "v2.safetensors").exists()
    # nothing advises resuming it any more, and asking again appends nothing
    capsys.readouterr()
    assert main(["ledger", "verify", str(store)]) == 0
    assert "unfinished" not in capsys.readouterr().out
    assert main(forget_args(store, a, base["policy"], "--model", "digits@1")) == 2
    assert "drop @1" in one_error_line(capsys.readouterr().err) and len(book) == n + 1
    # filed against the current version, A's ids go too, and B's stay gone
    assert main(forget_args(store, a, base["policy"])) == 0
    assert st.resolve("digits").version == 4
    assert held(store) == set(range(100, 130)) | set(range(200, 230))
    # and a later request for B's ids is told who deleted them
    rid_b = book.entries(kind="request-finished")[0].request_id
    capsys.readouterr()
    assert main(forget_args(store, b, base["policy"])) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "already deleted" in line and rid_b in line


@pytest.mark.slow
def test_a_late_request_on_an_old_version_is_refused_before_any_row(store, base, tmp_path,
                                                                     capsys):
    assert main(forget_args(store, _ids(tmp_path / "a.ids", range(10, 40)),
                            base["policy"])) == 0
    before = snapshot(store)
    capsys.readouterr()
    assert main(forget_args(store, _ids(tmp_path / "b.ids", range(50, 80)), base["policy"],
                            "--model", "digits@1")) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "still holds 30 id(s)" in line and "drop @1" in line
    assert snapshot(store) == before


@pytest.mark.slow
def test_re_adding_a_name_with_deletions_needs_a_new_lineage(store, base, tmp_path, capsys):
    ids = _ids(tmp_path / "a.ids", range(300, 330))
    assert main(forget_args(store, ids, base["policy"])) == 0
    rid = Ledger(store / "ledger.sqlite").entries(kind="request-finished")[-1].request_id
    before = snapshot(store)
    v1 = tmp_path / "v1.safetensors"
    shutil.copy(store / "models" / "digits" / "v1.safetensors", v1)
    shutil.copy(store / "models" / "digits" / "v1.json", tmp_path / "v1.json")
    capsys.readouterr()
    # dormant train --store refuses before it trains; store add refuses too
    assert main(["train", "--dataset", "digits", "--out", str(tmp_path / "t"), "--store",
                 str(store), "--name", "digits", "--device", "cpu"]) == 2
    assert "promoted deletion" in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "t").exists()
    assert main(["store", "add", str(store), "digits", str(v1)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert rid in line and "--new-lineage" in line
    assert snapshot(store) == before
    # named explicitly, it is a new lineage, and the ledger says what it replaced
    assert main(["store", "add", str(store), "digits", str(v1), "--new-lineage",
                 "restored from backup for the test"]) == 0
    st = ModelStore(store)
    row = st.ledger.entries(kind="model-added")[-1].payload
    assert row["lineage"] == 2 and row["replaces"]["requests"] == [rid]
    assert row["replaces"]["deleted_ids"] == 30
    current = st.resolve("digits")
    assert (current.version, current.lineage) == (3, 2)
    # and once a name has had deletions, every checkpoint added to it is a lineage of its own
    capsys.readouterr()
    assert main(["store", "add", str(store), "digits", str(v1)]) == 2
    assert "--new-lineage" in one_error_line(capsys.readouterr().err)
    # the old lineage is no base any more, and its ids are deleted again from the new one
    capsys.readouterr()
    other = _ids(tmp_path / "b.ids", range(340, 370))
    assert main(forget_args(store, other, base["policy"], "--model", "digits@2")) == 2
    assert "lineage 1" in one_error_line(capsys.readouterr().err)
    assert main(forget_args(store, ids, base["policy"])) == 0
    out = capsys.readouterr().out
    assert "earlier lineage" in out and rid in out
    assert held(store) == set(range(300, 330))
    assert st.ledger.verify(store=store).ok


def test_no_command_writes_inside_the_store(store, base, tmp_path, capsys):
    assert main(forget_args(store, _ids(tmp_path / "a.ids", range(400, 430)),
                            base["policy"])) == 0
    rid = Ledger(store / "ledger.sqlite").entries(kind="request-finished")[-1].request_id
    before = snapshot(store)
    folder = store / "models" / "digits"
    cases = [
        ["ledger", "export", str(store), "--format", "csv", "--out",
         str(store / "ledger.sqlite")],
        ["ledger", "export", str(store), "--out", str(folder / "v1.safetensors")],
        ["audit", "--original", str(folder / "v1.safetensors"), "--unlearned",
         str(folder / "v2.safetensors"), "--ids", str(tmp_path / "a.ids"), "--policy",
         str(base["policy"]), "--out", str(store / "requests" / rid), "--device", "cpu"],
        ["train", "--dataset", "digits", "--out", str(store / "models"), "--device", "cpu"],
        ["train", "--dataset", "digits", "--out", str(tmp_path / "new" / "t"), "--store",
         str(tmp_path / "new"), "--name", "n", "--device", "cpu"],
    ]
    for args in cases:
        capsys.readouterr()
        assert main(args) == 2, args
        assert "inside the model store" in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "new").exists()
    # an existing folder, or an SQLite file, is no export target either
    capsys.readouterr()
    assert main(["ledger", "export", str(store), "--out", str(tmp_path)]) == 2
    assert "is a folder" in one_error_line(capsys.readouterr().err)
    outside = tmp_path / "other.sqlite"
    shutil.copy(store / "ledger.sqlite", outside)
    assert main(["ledger", "export", str(store), "--out", str(outside)]) == 2
    assert "SQLite" in one_error_line(capsys.readouterr().err)
    assert snapshot(store) == before
    assert main(["ledger", "export", str(store), "--out", str(tmp_path / "l.json")]) == 0


@pytest.mark.parametrize("edit", [
    "UPDATE entries SET payload = replace(payload, 'alice', 'mallory') WHERE seq = 2",
    # the finished row no longer names its request: a sweep trusting it would take v2 for
    # a killed request's leftovers and delete the current checkpoint
    "UPDATE entries SET request_id = 'x' WHERE kind = 'request-finished'",
])
def test_nothing_is_appended_to_a_chain_that_does_not_verify(store, base, tmp_path, capsys,
                                                            edit):
    assert main(forget_args(store, _ids(tmp_path / "a.ids", range(500, 530)),
                            base["policy"])) == 0
    con = sqlite3.connect(store / "ledger.sqlite")
    for name, in con.execute("SELECT name FROM sqlite_master WHERE type='trigger'").fetchall():
        con.execute(f"DROP TRIGGER {name}")
    con.execute(edit)
    con.commit()
    con.close()
    before = snapshot(store)
    capsys.readouterr()
    assert main(forget_args(store, _ids(tmp_path / "b.ids", range(600, 630)),
                            base["policy"])) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "does not verify (row " in line and "broken chain" in line
    v1 = store / "models" / "digits" / "v1.safetensors"
    assert main(["store", "add", str(store), "other", str(v1)]) == 2
    assert "does not verify" in one_error_line(capsys.readouterr().err)
    assert snapshot(store) == before


def test_a_request_for_every_training_id_is_refused_up_front(store, base, tmp_path, capsys):
    before = snapshot(store)
    every = _ids(tmp_path / "all.ids", range(1437))
    assert main(forget_args(store, every, base["policy"])) == 2
    assert "every remaining training id" in one_error_line(capsys.readouterr().err)
    assert snapshot(store) == before


def test_a_full_disk_records_request_failed_and_leaves_nothing_half_written(
        store, base, tmp_path, capsys, monkeypatch):
    args = forget_args(store, _ids(tmp_path / "a.ids", range(700, 730)), base["policy"])
    monkeypatch.setenv("DORMANT_FAILPOINT", "disk-full")
    capsys.readouterr()
    assert main(args) == 1
    line = one_error_line(capsys.readouterr().err)
    assert "No space left on device" in line and "request-failed" in line
    book = Ledger(store / "ledger.sqlite")
    assert [e.kind for e in book.entries()] == ["model-added", "request-started",
                                                "request-failed"]
    assert "No space left" in book.entries()[-1].payload["error"]
    folder = store / "models" / "digits"
    assert sorted(p.name for p in folder.iterdir()) == ["v1.json", "v1.safetensors"]
    assert book.verify(store=store).ok
    # with space again, the same request is retried under its id and finishes
    monkeypatch.delenv("DORMANT_FAILPOINT")
    assert main(args) == 0
    assert [e.kind for e in book.entries()][-2:] == ["request-resumed", "request-finished"]
    assert held(store) == set(range(700, 730))


def _obeying_modes() -> list[str]:
    """A command prefix under which mode bits hold: root writes through them unless it drops
    CAP_DAC_OVERRIDE (and CAP_FOWNER, which would let it change them); others need nothing."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:  # util-linux, essential on Debian
        pytest.fail("setpriv (util-linux) is missing: root cannot be made to obey mode bits")
    return ["setpriv", "--bounding-set", "-dac_override,-fowner", "--"]


@pytest.mark.slow
def test_a_read_only_store_is_refused_in_one_line_with_nothing_recorded(store, base, tmp_path):
    ids = _ids(tmp_path / "a.ids", range(800, 830))
    for p in [store, *store.rglob("*")]:
        os.chmod(p, 0o555 if p.is_dir() else 0o444)
    try:
        before = snapshot(store)
        got = subprocess.run(
            [*_obeying_modes(), sys.executable, "-m", "dormant",
             *forget_args(store, ids, base["policy"])],
            capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert got.returncode == 2, got.stderr
        assert "cannot be written" in one_error_line(got.stderr)
        assert snapshot(store) == before
    finally:
        for p in [store, *store.rglob("*")]:
            os.chmod(p, 0o755 if p.is_dir() else 0o644)


@pytest.mark.slow
@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_mid_request_records_request_failed(store, base, tmp_path, sig, code):
    args = forget_args(store, _ids(tmp_path / "a.ids", range(900, 930)), base["policy"],
                       "--method", "finetune", "--hparam", "steps=1000000")
    proc = subprocess.Popen([sys.executable, "-m", "dormant", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    for line in proc.stdout:  # printed just before the method starts its million steps
        if "unlearning 30 ids" in line:
            break
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    line = one_error_line(err)
    assert f"interrupted by {sig.name}" in line and "request-failed" in line
    book = Ledger(store / "ledger.sqlite")
    last = book.entries()[-1]
    assert last.kind == "request-failed" and sig.name in last.payload["error"]
    assert sorted(p.name for p in (store / "models" / "digits").iterdir()) == [
        "v1.json", "v1.safetensors"]
    assert book.verify(store=store).ok


def test_the_batch_shares_its_retain_only_attack(digits_setup, monkeypatch):
    """One retain-only attack per model for the whole batch, each request's k-leaked attack
    on its own, and every block what the request alone would have measured."""
    import dormant.requests.checks as checks
    from dormant.requests.checks import (
        CheckBudget,
        Oracle,
        RequestData,
        run_batch_checks,
        run_checks,
    )
    from dormant.unlearn import UnlearnContext, UnlearnData, unlearn

    prep = digits_setup
    x, y, xt, yt = prep.x, prep.y, prep.x_test, prep.y_test
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(5))
    parts = [order[i * 24:(i + 1) * 24] for i in range(3)]
    keep = torch.ones(len(y), dtype=torch.bool)
    keep[order[:72]] = False
    retain = torch.nonzero(keep).flatten()
    ctx = UnlearnContext(prep.recipe, lambda s=None: None, 0)
    data = UnlearnData(x, y, order[:72], retain, order[:0], 10)
    ga = unlearn("gradient_ascent", prep.original, data, ctx, steps=10, lr=1e-3)
    datas = [RequestData(x, y, xt, yt, p[:19], p[19:], retain, prep.recipe, 10)
             for p in parts]
    budget = CheckBudget(relearn_steps=20, leaked_k=2, defender_images=20,
                         nc={"epochs": 1, "batch_size": 10}, uap={"steps": 2}, mia_size=50)
    oracle = Oracle("the study's oracle", prep.oracle)
    calls = []
    real = checks.relearn
    monkeypatch.setattr(checks, "relearn",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    batch = run_batch_checks(prep.original, ga, datas, budget, oracle=oracle)
    assert len(calls) == 2 + 2 * len(datas)  # k0 once per model, k2 per request per model
    calls.clear()
    alone = [run_checks(prep.original, ga, d, budget, oracle=oracle) for d in datas]
    assert len(calls) == 4 * len(datas)
    for b, a in zip(batch, alone, strict=True):
        assert b["tamper"] == a["tamper"]
        assert b["after"]["forget_acc"] == a["after"]["forget_acc"]
        assert b["after"]["mia_auc"] == a["after"]["mia_auc"]
    # the requests differ, so their curves do
    assert len({str(b["tamper"]["k0"]["forget_acc"]) for b in batch}) > 1


def test_a_store_whose_ledger_is_gone_is_never_given_a_fresh_one(store, base, tmp_path,
                                                                 capsys):
    assert main(forget_args(store, _ids(tmp_path / "a.ids", range(40, 70)),
                            base["policy"])) == 0
    (store / "ledger.sqlite").unlink()
    before = snapshot(store)
    v1 = tmp_path / "v1.safetensors"
    shutil.copy(store / "models" / "digits" / "v1.safetensors", v1)
    capsys.readouterr()
    assert main(["store", "add", str(store), "digits", str(v1)]) == 2
    assert "ledger" in one_error_line(capsys.readouterr().err)
    assert snapshot(store) == before and not (store / "ledger.sqlite").exists()


def test_another_stores_ledger_cannot_hide_this_stores_deletions(store, base, tmp_path,
                                                                 capsys):
    """`--ledger` naming a ledger that does not know this store's checkpoints (another
    store's, or a fresh one) would see none of its deletions: refused, nothing written."""
    ids = _ids(tmp_path / "a.ids", range(300, 330))
    assert main(forget_args(store, ids, base["policy"])) == 0
    v1 = tmp_path / "v1.safetensors"
    shutil.copy(store / "models" / "digits" / "v1.safetensors", v1)
    shutil.copy(store / "models" / "digits" / "v1.json", tmp_path / "v1.json")
    elsewhere = tmp_path / "x.sqlite"
    assert main(["store", "add", str(tmp_path / "s2"), "other", str(v1), "--ledger",
                 str(elsewhere)]) == 0
    before, other = snapshot(store), elsewhere.read_bytes()
    capsys.readouterr()
    assert main(["store", "add", str(store), "digits", str(v1), "--ledger",
                 str(elsewhere)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "does not name" in line and "v2.safetensors" in line
    assert main(forget_args(store, ids, base["policy"], "--ledger", str(elsewhere))) == 2
    assert "does not name" in one_error_line(capsys.readouterr().err)
    assert snapshot(store) == before and elsewhere.read_bytes() == other


@pytest.mark.slow
def test_an_old_backup_as_ledger_never_deletes_a_finished_version(store, base, tmp_path):
    """A copy of the ledger taken while a request ran shows its finished version as a killed
    request's leftovers; used as --ledger, its sweep must not delete that checkpoint."""
    ids = _ids(tmp_path / "a.ids", range(10, 40))
    args = forget_args(store, ids, base["policy"])
    assert _cli(*args, env={"DORMANT_FAILPOINT": "written"}).returncode == -9
    backup = tmp_path / "backup.sqlite"
    shutil.copy(store / "ledger.sqlite", backup)
    assert main(args) == 0  # resumed and finished: v2 is current
    v2 = store / "models" / "digits" / "v2.safetensors"
    kept = v2.read_bytes()
    main(forget_args(store, _ids(tmp_path / "b.ids", range(50, 80)), base["policy"],
                     "--ledger", str(backup)))
    assert v2.read_bytes() == kept
    assert Ledger(store / "ledger.sqlite").verify(store=store).ok
    assert held(store) == set(range(10, 40))
