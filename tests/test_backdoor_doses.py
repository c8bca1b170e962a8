"""The defenses' dose-matched positive controls (issue 23, item 5): each defense judged by its
own rule on plain backdoors of the study's trigger at several strengths; the report names
the weakest it caught, and I-BAU is judged relative to the unpoisoned twin's floor."""

from __future__ import annotations

import pytest
import torch
from cli_helpers import refused_before_training
from pydantic import ValidationError

from dormant.experiments.backdoor_spec import BackdoorSpec
from dormant.report.backdoor_doses import DORMANT, dose_controls, doses_display, doses_sentence


def _row(seed, dose, asr, *, nc=None, cd=None, ibau=None, floor=1.0, clean=95.0,
         clean_after=None, condition="dose"):
    return {"status": "ok", "method": "none", "condition": condition, "seed": seed,
            "dose": dose, "poisons": dose, "asr_before": asr,
            "clean_acc_before": clean, "nc_flag_before": nc, "nc_index_before": 2.5,
            "cd_auroc_fired_before": cd, "ibau_asr": ibau, "asr_floor": floor,
            "ibau_clean_acc": clean if clean_after is None else clean_after}


def _run(spec):
    """Rows of 3 seeds: ``spec`` maps a dose to (asr, nc flags per seed, cd AUROC per seed)."""
    rows = []
    for dose, (asr, ncs, cds) in spec.items():
        for s in range(3):
            rows.append(_row(s, dose, asr, nc=ncs[s], cd=cds[s],
                             condition="none" if dose is None else "dose"))
    return rows


def test_the_weakest_caught_is_the_lowest_dose_of_an_unbroken_run_of_passes():
    """NC passes a strength flagged on 2 of 3 seeds (its 2/3 rule), CD needs every seed.
    NC: dose 12 fails, 14 passes on 2 of 3, 18 and 27 on all: weakest 14. CD passes dose 12
    but misses one seed at 18: a pass below a miss is no catch, so its weakest is 27."""
    rows = _run({0: (0.5, [False] * 3, [0.5] * 3),
                 12: (20.0, [False] * 3, [0.95] * 3),
                 14: (40.0, [True, True, False], [0.95] * 3),
                 18: (60.0, [True] * 3, [0.95, 0.95, 0.7]),
                 27: (90.0, [True] * 3, [0.99] * 3),
                 None: (27.0, [False] * 3, [0.5] * 3)})
    d = dose_controls(rows)
    assert [s["key"] for s in d["strengths"]] == [0, 12, 14, 18, 27, DORMANT]
    assert [round(s["asr"], 1) for s in d["strengths"]] == [0.5, 20.0, 40.0, 60.0, 90.0, 27.0]
    nc, cd = d["defenses"]["nc"], d["defenses"]["cd"]
    assert nc["weakest"] == 14 and nc["weakest_asr"] == 40.0
    assert nc["by"][12] == {"status": "fail", "passes": 0, "seeds": 3}
    assert nc["by"][14] == {"status": "pass", "passes": 2, "seeds": 3}
    assert nc["by"][DORMANT]["status"] == "fail"
    assert cd["by"][12]["status"] == "pass" and cd["by"][18]["status"] == "fail"
    assert cd["weakest"] == 27
    # I-BAU did not run: no judgement, and the table says so rather than "caught none"
    ibau = d["defenses"]["ibau"]
    assert ibau["weakest"] is None and ibau["why"] == "not run"
    assert ibau["by"][14]["status"] == "not run"
    table = doses_display(d)
    assert table.headers[-1] == "weakest caught" and len(table.rows) == 3
    line = {r[0]: r for r in table.rows}["Neural Cleanse"]
    assert line[2:] == ["0/3", "0/3", "2/3 ✓", "3/3 ✓", "3/3 ✓", "0/3", "14 poisons (ASR 40.0)"]
    assert "I-BAU: not run" in doses_sentence(d)


def test_a_defense_that_fires_on_the_clean_model_catches_nothing():
    rows = _run({0: (0.5, [True, True, False], [0.5] * 3),
                 12: (20.0, [True] * 3, [0.5] * 3)})
    nc = dose_controls(rows)["defenses"]["nc"]
    assert nc["by"][12]["status"] == "pass" and nc["weakest"] is None
    assert "clean model" in nc["why"]


def test_a_strength_judged_on_fewer_seeds_than_the_run_is_no_catch():
    """A failed cell (seed 2 missing at dose 14) leaves 2 of 3 seeds: partial, not a pass."""
    rows = [r for r in _run({0: (0.5, [False] * 3, [0.5] * 3),
                             14: (40.0, [True] * 3, [0.95] * 3)})
            if not (r["dose"] == 14 and r["seed"] == 2)]
    cd = dose_controls(rows)["defenses"]["cd"]
    assert cd["by"][14] == {"status": "partial", "passes": 2, "seeds": 2}
    assert cd["weakest"] is None


@pytest.mark.parametrize("asr,after,floor,clean_after,status", [
    (30.0, 10.0, 2.0, 95.0, "pass"),      # removes 20 of 28 points above the floor: 71%
    (30.0, 17.0, 3.0, 95.0, "fail"),      # 13 of 27: just under half
    (30.0, 16.0, 2.0, 95.0, "pass"),      # 14 of 28: half, the bar itself
    (30.0, 20.0, 2.0, 95.0, "fail"),      # 10 of 28: 36%
    (30.0, 5.0, 2.0, 89.0, "fail"),       # removed, but clean accuracy fell 6 points
    (99.0, 60.0, 1.0, 95.0, "fail"),      # 39 points of 98: BadNets' 50-point rule made relative
    (11.5, 1.0, 1.0, 95.0, "pass"),       # 10.5 points above the floor: judged
    (10.9, 1.0, 1.0, 95.0, "not run"),    # 9.9 points above it: nothing to remove, unjudged
])
def test_ibau_at_a_dose_removes_half_the_asr_above_the_floor(asr, after, floor, clean_after,
                                                             status):
    rows = [_row(0, 14, asr, ibau=after, floor=floor, clean_after=clean_after)]
    assert dose_controls(rows)["defenses"]["ibau"]["by"][14]["status"] == status


def test_the_dose_condition_needs_doses():
    with pytest.raises(ValidationError, match="condition dose scans the backdoors listed"):
        BackdoorSpec(conditions=["none", "dose"])
    assert BackdoorSpec(conditions=["dose"], doses=[1, 2]).doses == [1, 2]
    with pytest.raises(ValidationError):
        BackdoorSpec(conditions=["dose"], doses=[-1])


def test_a_dose_larger_than_a_class_is_refused_before_training(tmp_path, monkeypatch,
                                                               capsys):
    study = {"dataset": "digits", "model": "mlp", "seeds": [0], "arm": "camouflage",
             "train_size": None, "test_size": None, "methods": ["retrain"],
             "conditions": ["none", "dose"], "doses": [0, 18, 5000],
             "trigger": {"kind": "patch", "size": 3}, "poisons_per_class": 3,
             "contribution": 0.3, "public": 0, "poison_choice": "random",
             "defenses": {"nc": False, "cd": False, "ibau": False, "defense_size": 100},
             "device": "cpu"}
    err = refused_before_training(tmp_path, monkeypatch, capsys, study)
    assert "doses asks 5000 poisons" in err


def test_a_dose_spreads_its_poisons_over_the_source_classes(digits):
    from dormant.attacks import PoisonSpec, Trigger, poison

    spec = PoisonSpec(0, Trigger("patch", size=3), 1)
    p = poison(digits.x_train, digits.y_train, spec, 10, seed=3, total=14)
    counts = torch.bincount(digits.y_train[p.ids], minlength=10)
    assert len(p.ids) == 14 and counts[0] == 0
    assert sorted(counts[1:].tolist()) == [1] * 4 + [2] * 5
    assert (p.y[p.ids] == 0).all()
    assert not torch.equal(p.ids, poison(digits.x_train, digits.y_train, spec, 10, seed=4,
                                         total=14).ids)
