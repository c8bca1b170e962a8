"""The backdoor study end to end through the CLI on digits: every condition, the strength
matching of the random control, resumption, and the report; plus the AUROC it uses."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from dormant.attacks.clean_unlearning import is_clean
from dormant.cli import main
from dormant.experiments import BackdoorSpec
from dormant.experiments.backdoor import check_spec, prepare_victim, request_for
from dormant.experiments.prepare import load_study_data
from dormant.metrics import auroc
from dormant.store import ModelCache

# whole backdoor studies through the CLI; `make test-quick` leaves them out
pytestmark = pytest.mark.slow

REQUIRED = ["dataset", "model", "method", "condition", "seed", "trigger", "amplitude",
            "poisons", "clean_acc_before", "asr_before", "clean_acc_after", "asr_after",
            "nc_index_before", "nc_index_after", "nc_flag_before", "nc_flag_after",
            "cd_auroc_before", "cd_auroc_after", "ibau_asr", "seconds"]

STUDY = {
    "dataset": "digits", "model": "mlp", "train_size": None, "test_size": None,
    "seeds": [0], "methods": ["retrain", "bad_teacher", "boundary_shrink"],
    "conditions": ["attack", "random-clean", "unpoisoned", "none", "badnets"],
    "trigger": {"kind": "noise", "amplitude": 0.1}, "poisons_per_class": 2, "request": 30,
    "contribution": 0.3, "strategy": "margin", "public": 0, "poison_choice": "random",
    "retrain_seeds": 1,
    "hparams": {"bad_teacher": {"steps": 30, "lr": 1e-3},
                "boundary_shrink": {"steps": 10, "lr": 1e-3}},
    "defenses": {"nc": {"epochs": 5}, "cd": {"steps": 20, "images": 60}, "ibau": {"rounds": 1},
                 "defense_size": 100},
    "device": "cpu",
}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("backdoor")
    path = root / "study.yaml"
    path.write_text(yaml.safe_dump(STUDY))
    return path, root / "cache", root / "out"


def _run(study, monkeypatch) -> list[dict]:
    path, cache, out = study
    monkeypatch.setenv("DORMANT_CACHE", str(cache))
    assert main(["backdoor", str(path), "--out", str(out)]) == 0
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def test_study_rows_matching_and_resume(study, monkeypatch, capsys):
    rows = _run(study, monkeypatch)
    assert len(rows) == 3 * 3 + 2 and all(r["status"] == "ok" for r in rows)
    for r in rows:
        missing = [k for k in REQUIRED if k not in r]
        assert not missing, (r["method"], r["condition"], missing)
    by = {(r["method"], r["condition"]): r for r in rows}
    # one poisoned model before any deletion: every poisoned cell starts from the same numbers
    poisoned = [r for r in rows if r["condition"] in ("attack", "random-clean", "none")]
    assert len({(r["asr_before"], r["clean_acc_before"]) for r in poisoned}) == 1
    assert by["none", "none"]["asr_after"] == by["none", "none"]["asr_before"]
    assert 50 < by["none", "none"]["ibau_clean_acc"] <= 100
    # the unpoisoned twin has no backdoor; the BadNets baseline has a strong one
    assert all(r["asr_before"] <= 5 for r in rows if r["condition"] == "unpoisoned")
    bad = by["none", "badnets"]
    assert bad["trigger"] == "patch" and bad["amplitude"] == 1.0 and bad["asr_before"] >= 90
    # strength matching: the control was stopped at the attack request's own accuracy drop
    for m in ("bad_teacher", "boundary_shrink"):
        att, ctl = by[m, "attack"], by[m, "random-clean"]
        drop = att["forget_acc_before"] - att["forget_acc_after"]
        assert ctl["matched_drop"] == pytest.approx(drop, abs=1e-3)
        assert ctl["hparams"]["stop_acc"] == pytest.approx(ctl["forget_acc_before"] - drop,
                                                           abs=1e-3)
        assert att["matched_drop"] is None and "stop_acc" not in att["hparams"]
        # it may run up to match_budget (4) times the attack's steps to get there
        assert ctl["hparams"]["steps"] == 4 * STUDY["hparams"][m]["steps"]
    assert by["retrain", "random-clean"]["matched_drop"] is None  # no stop rule to match
    # retraining without the request drops its accuracy to what the model generalises
    assert by["retrain", "attack"]["forget_acc_after"] < by["retrain", "attack"][
        "forget_acc_before"]
    out = study[2]
    for name in ("report.html", "report.md", "results.csv", "asr.png", "asr_cost.png",
                 "nc_triggers.png", "cd_masks.png"):
        assert (out / name).is_file(), name
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 4
    assert (out / by["none", "none"]["artefact_before"]).is_file()
    assert "Activated" in capsys.readouterr().out
    # a rerun finds every cell done and adds nothing
    before = (out / "results.jsonl").read_text()
    assert _run(study, monkeypatch) and (out / "results.jsonl").read_text() == before


def test_the_studys_requests_are_clean(study, monkeypatch, digits):
    """The deletion request and its random control, as the study builds them, hold only
    untouched, correctly labelled, non-target images of the attacker's contribution."""
    path, cache, _ = study
    spec = BackdoorSpec(**STUDY)
    ds = load_study_data(spec, cache)
    attack = check_spec(spec, ds)
    v = prepare_victim(spec, attack, ds, 0, ModelCache(cache), None, cache)
    request, design = request_for(v, "bad_teacher", {}, ModelCache(cache), None)
    assert design is None  # margin: one request for every method, no search
    for ids in (request, v.control):
        assert len(ids) == 30
        assert is_clean(ids, v.planted, ds.x_train, ds.y_train, target=0)
        assert torch.isin(ids, v.planted.contribution).all()
    assert not torch.isin(request, v.control).any()


def test_auroc_is_the_mann_whitney_statistic():
    from sklearn.metrics import roc_auc_score

    g = torch.Generator().manual_seed(0)
    neg, pos = torch.randn(50, generator=g), torch.randn(40, generator=g) + 1.0
    pos[:5] = neg[:5]  # ties count one half
    labels = [0] * 50 + [1] * 40
    assert auroc(neg, pos) == pytest.approx(roc_auc_score(labels, torch.cat([neg, pos])))
    assert auroc(torch.zeros(3), torch.ones(3)) == 1.0
    assert auroc(torch.ones(3), torch.zeros(3)) == 0.0
