"""The defenses' dose-matched positive controls (issue 23, item 5): each defense judged by its
own rule on plain backdoors of the study's trigger at several strengths; the report names
the weakest it caught, and I-BAU is judged relative to the unpoisoned twin's floor."""

from __future__ import annotations

import pytest
import torch
import yaml
from pydantic import ValidationError

from dormant.cli import main
from dormant.defenses.ibau import CONTROL_SHARE_REMOVED_MIN
from dormant.experiments.backdoor_spec import BackdoorSpec
from dormant.report.backdoor_doses import DORMANT, dose_controls, doses_display


def _row(seed, dose, asr, *, nc=None, cd=None, ibau=None, floor=1.0, clean=95.0,
         clean_after=None, condition="dose"):
    return {"status": "ok", "method": "none", "condition": condition, "seed": seed,
            "dose": dose, "poisons": None if dose is None else 9 * dose, "asr_before": asr,
            "clean_acc_before": clean, "nc_flag_before": nc, "nc_index_before": 2.5,
            "cd_auroc_before": cd, "ibau_asr": ibau, "asr_floor": floor,
            "ibau_clean_acc": clean if clean_after is None else clean_after}


def test_the_weakest_caught_is_the_weakest_dose_the_rule_passes():
    """NC passes a dose flagged on 2 of 3 seeds (its 2/3 rule) and CD needs every seed: with
    NC flagging dose 2 on seeds 0 and 1 only, NC's weakest is dose 2 (ASR 40); CD misses
    one seed at dose 4, so its weakest is dose 8, though dose 2 passes (the weakest by
    ASR, not the first of a monotone run)."""
    rows = []
    for s in range(3):
        rows += [_row(s, 1, 20.0, nc=False, cd=0.6),
                 _row(s, 2, 40.0, nc=s < 2, cd=0.95),
                 _row(s, 4, 60.0, nc=True, cd=0.95 if s else 0.7),
                 _row(s, 8, 95.0, nc=True, cd=0.99),
                 _row(s, None, 27.0, nc=False, cd=0.5, condition="none")]
    d = dose_controls(rows)
    assert [s["key"] for s in d["strengths"]] == [1, 2, 4, 8, DORMANT]
    assert [round(s["asr"], 1) for s in d["strengths"]] == [20.0, 40.0, 60.0, 95.0, 27.0]
    nc, cd = d["defenses"]["nc"], d["defenses"]["cd"]
    assert nc["weakest"] == 2 and nc["weakest_asr"] == 40.0
    assert nc["by"][1] == {"status": "fail", "passes": 0, "seeds": 3}
    assert nc["by"][2] == {"status": "pass", "passes": 2, "seeds": 3}
    assert nc["by"][DORMANT]["status"] == "fail"
    assert cd["by"][4]["status"] == "fail" and cd["weakest"] == 2
    # I-BAU did not run: no judgement, no weakest
    assert d["defenses"]["ibau"]["weakest"] is None
    assert d["defenses"]["ibau"]["by"][2]["status"] == "not run"
    table = doses_display(d)
    assert table.headers[-1] == "weakest caught" and len(table.rows) == 3
    line = {r[0]: r for r in table.rows}["Neural Cleanse"]
    assert line[2:] == ["0/3", "2/3 ✓", "3/3 ✓", "3/3 ✓", "0/3", "2 poisons (ASR 40.0)"]


@pytest.mark.parametrize("asr,after,floor,clean_after,passes", [
    (30.0, 10.0, 2.0, 95.0, True),    # removes 20 of 28 points above the floor: 71%
    (30.0, 17.0, 3.0, 95.0, False),   # 13 of 27: just under half
    (30.0, 16.0, 2.0, 95.0, True),    # 14 of 28: half, the bar itself
    (30.0, 20.0, 2.0, 95.0, False),   # 10 of 28: 36%
    (30.0, 5.0, 2.0, 89.0, False),    # removed, but clean accuracy fell 6 points
    (99.0, 60.0, 1.0, 95.0, False),   # 39 points of 98: BadNets' 50-point rule made relative
    (2.0, 2.0, 2.0, 95.0, False),     # nothing above the floor: nothing removed
])
def test_ibau_at_a_dose_removes_half_the_asr_above_the_twin_floor(asr, after, floor,
                                                                  clean_after, passes):
    rows = [_row(0, 2, asr, ibau=after, floor=floor, clean_after=clean_after)]
    got = dose_controls(rows)["defenses"]["ibau"]["by"][2]
    assert got["status"] == ("pass" if passes else "fail")
    share = 0.0 if asr <= floor else (asr - after) / (asr - floor)
    assert (share >= CONTROL_SHARE_REMOVED_MIN and 95.0 - clean_after <= 5) == passes


def test_the_dose_condition_needs_doses():
    with pytest.raises(ValidationError, match="condition dose scans the backdoors listed"):
        BackdoorSpec(conditions=["none", "dose"])
    assert BackdoorSpec(conditions=["dose"], doses=[1, 2]).doses == [1, 2]
    with pytest.raises(ValidationError):
        BackdoorSpec(conditions=["dose"], doses=[0])


def test_a_dose_larger_than_a_class_is_refused_before_training(tmp_path, monkeypatch,
                                                               capsys):
    study = {"dataset": "digits", "model": "mlp", "seeds": [0], "arm": "camouflage",
             "train_size": None, "test_size": None, "methods": ["retrain"],
             "conditions": ["none", "dose"], "doses": [18, 5000],
             "trigger": {"kind": "patch", "size": 3}, "poisons_per_class": 3,
             "contribution": 0.3, "public": 0, "poison_choice": "random",
             "defenses": {"nc": False, "cd": False, "ibau": False, "defense_size": 100},
             "device": "cpu"}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(study))
    monkeypatch.setenv("DORMANT_CACHE", str(tmp_path / "cache"))
    assert main(["backdoor", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "doses asks 5000 poisons" in err
    assert not (tmp_path / "cache" / "models").exists() or not any(
        (tmp_path / "cache" / "models").iterdir())


def test_a_dose_spreads_its_poisons_over_the_source_classes(digits):
    from dormant.attacks import PoisonSpec, Trigger, poison

    spec = PoisonSpec(0, Trigger("patch", size=3), 1, total=14)
    p = poison(digits.x_train, digits.y_train, spec, 10, seed=3)
    counts = torch.bincount(digits.y_train[p.ids], minlength=10)
    assert len(p.ids) == 14 and counts[0] == 0
    assert sorted(counts[1:].tolist()) == [1] * 4 + [2] * 5
    assert (p.y[p.ids] == 0).all()
    assert not torch.equal(p.ids, poison(digits.x_train, digits.y_train, spec, 10, seed=4).ids)
