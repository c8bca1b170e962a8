"""An armed backdoor before any verdict (issue 23), on digits: the purity budget against a
hand count, camouflage that differs from its source only by the trigger and a bounded
perturbation, a carriers-first request that holds every carrier it can, the refusal of a
configuration no request can wake, and the headline that says unarmed when the ceiling is
not met."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from cli_helpers import refused_before_training

from dormant.attacks import Trigger
from dormant.attacks.camouflage import perturb, pick_camouflage
from dormant.attacks.clean_unlearning import (
    CleanUnlearningSpec,
    contribution_ids,
    plant,
    purity_budget,
    select_request,
)
from dormant.attacks.influence import backdoor_gradient
from dormant.attacks.poison import PoisonSpec
from dormant.cli import main
from dormant.engine import to_float
from dormant.report.backdoor import backdoor_verdict
from dormant.report.backdoor_arming import amplification, headline

BLOCK = Trigger("mined", size=2, row=0, col=0)


def _tiny():
    """20 blank 8x8 images, labels 0..9 twice; ids 4, 5, 8, 10 and 14 carry the 2x2 block
    at (0, 0) naturally (labels 4, 5, 8, 0 and 4)."""
    x = torch.zeros(20, 1, 8, 8, dtype=torch.uint8)
    y = torch.arange(20) % 10
    for i in (4, 5, 8, 10, 14):
        x[i, :, 0:2, 0:2] = 255
    return x, y


def test_purity_budget_matches_a_hand_count():
    x, y = _tiny()
    spec = CleanUnlearningSpec(PoisonSpec(0, BLOCK, 1, sources=(3, 6)), contribution=0.5,
                               request=1)
    own = contribution_ids(20, spec, 0)
    assert own.tolist() == [3, 4, 5, 6, 7, 9, 13, 14, 17, 19]
    # the attacker swaps a carrier of its own (label 7) into contributed place 7
    carrier = torch.zeros(1, 1, 8, 8, dtype=torch.uint8)
    carrier[:, :, 0:2, 0:2] = 255
    p = plant(x, y, spec, 10, 0, trigger=BLOCK,
              swap=(torch.tensor([7]), carrier, torch.tensor([7])))
    assert p.carriers.tolist() == [4, 5, 7, 8, 10, 14]
    assert p.attacker_carriers.tolist() == [4, 5, 7, 14]
    # by hand: two poisons labelled 0 and one carrier of class 0 (id 10, the victim's own)
    # make 3 target-labelled trigger images of 2 + 6; a request can hold the attacker's 4
    # non-target carriers, which leaves 3 of 2 + 2
    b = purity_budget(p, 0)
    assert (b.poisons, b.counterweights, b.victim_carriers, b.deletable) == (2, 4, 2, 4)
    assert b.before == pytest.approx(3 / 8) and b.after == pytest.approx(3 / 4)
    # a request of 2 images holds only 2 of them
    assert purity_budget(p, 0, request=2).after == pytest.approx(3 / 6)
    assert "purity" in b.line() and f"{b.after:.3f}" in b.line()


def test_carriers_first_holds_every_carrier_it_can(digits, digits_backdoor):
    x, y = digits.x_train, digits.y_train
    t = Trigger("mined", size=2, carrier_rate=0.05)
    from dormant.attacks.natural import mine
    t = mine(t, x, y, 0)
    for request in (5, 200):
        spec = CleanUnlearningSpec(PoisonSpec(0, t, 2), contribution=0.3, request=request,
                                   strategy="carriers")
        p = plant(x, y, spec, 10, 0, trigger=t)
        in_pool = p.carriers[torch.isin(p.carriers, p.clean_pool)]
        assert len(in_pool) > 5  # the test means something only with carriers to choose
        ids = select_request(digits_backdoor["clean"], p, spec, 0)
        held = int(torch.isin(ids, p.carriers).sum())
        assert held == min(request, len(in_pool))


def test_camouflage_differs_only_by_trigger_and_bounded_perturbation(digits,
                                                                    digits_backdoor):
    model, trigger = digits_backdoor["clean"], Trigger("patch", size=3)
    x, y = digits.x_train, digits.y_train
    pool = torch.nonzero(y != 0).flatten()[:300]
    ids = pick_camouflage(y, pool, 64, seed=3)
    assert len(ids) == 64 and torch.isin(ids, pool).all() and (y[ids] != 0).all()
    ref = digits.x_test[digits.y_test != 0][:200]
    eps = 8 / 255  # digits are 17 grey levels: a budget large enough to move a level
    camo = perturb(model, x[ids], y[ids], ref, trigger, 0, eps)
    stamped = trigger.stamp(x[ids])
    weight, _ = trigger.pattern((1, 8, 8))
    on = (weight > 0).expand_as(stamped)
    diff = (camo.int() - stamped.int()).abs()
    assert torch.equal(camo[on], stamped[on])  # the trigger's pixels as stamped
    assert int(diff.max()) <= round(eps * 255)  # elsewhere within the budget
    assert int((diff > 0).sum()) > 100  # and it did move
    # the perturbation's aim, in numbers: a step on the camouflage raises the backdoor loss
    # more than a step on the plain stamped images (a lower cosine with its gradient)
    g_b = backdoor_gradient(model, ref, trigger, 0)

    def cosine(images):
        model.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(to_float(images)), y[ids])
        loss.backward()
        g = torch.cat([p.grad.flatten() for p in model.parameters()])
        return float(g @ g_b / (g.norm() * g_b.norm()))

    assert cosine(camo) < cosine(stamped) - 0.05
    # no budget: the stamped images themselves
    assert torch.equal(perturb(model, x[ids], y[ids], ref, trigger, 0, 0.0), stamped)


def _row(seed, cond, method, asr_after, **extra):
    return {"status": "ok", "seed": seed, "condition": cond, "method": method,
            "clean_acc_before": 95.0, "clean_acc_after": 94.0, "asr_before": 20.0,
            "asr_after": asr_after, "target": 0, "arm": "camouflage", **extra}


def _arm_rows(ceiling: float, attack: float, dormant: float = 20.0, random: float = 21.0,
              unpoisoned: float = 1.0) -> list[dict]:
    rows = []
    for seed in range(3):
        c = {"asr_ceiling": ceiling, "asr_ceiling_no_carriers": ceiling,
             "armed": ceiling >= 80, "asr_before": dormant}
        rows += [_row(seed, "attack", "retrain", attack + seed, **c),
                 _row(seed, "random-equal", "retrain", random + 2 * seed, **c),
                 {**_row(seed, "unpoisoned", "retrain", unpoisoned, **c), "asr_before": 0.0},
                 _row(seed, "none", "none", dormant, **c)]
    return rows


@pytest.mark.parametrize(("ceiling", "attack", "dormant", "expected"), [
    (99.0, 90.0, 20.0, "woken"),
    (99.0, 22.0, 20.0, "not woken, armed"),
    (50.0, 22.0, 20.0, "unarmed"),   # the poisons alone cannot fire: nothing could have woken
    (99.0, 80.0, 70.0, "not held down"),  # no room under the ceiling for a 40-point rise
])
def test_the_headline_gates_not_woken_on_the_ceiling(ceiling, attack, dormant, expected):
    rows = _arm_rows(ceiling, attack, dormant)
    v = backdoor_verdict(rows)
    assert v["headline"] == expected
    assert v["armed"] == ((3, 3) if ceiling >= 80 else (0, 3))
    assert "camouflage, not clean" in v["headline_text"]
    # rows without a ceiling (runs before ceilings existed) are never "not woken, armed"
    bare = [{k: v for k, v in r.items() if not k.startswith(("asr_ceiling", "armed"))}
            for r in rows]
    assert headline(bare, [], [], 40.0)[0] == "unarmed"


def test_the_headline_never_calls_a_run_without_requests_or_controls_a_verdict():
    # the unpoisoned twin rises too: activated, but not shown to be the request's doing
    assert backdoor_verdict(_arm_rows(99.0, 90.0, unpoisoned=30.0))["headline"] == (
        "activated, cause not shown")
    # every attack cell failed: armed ceilings say nothing about requests never applied
    rows = [r if r["condition"] != "attack" else {**r, "status": "failed"}
            for r in _arm_rows(99.0, 22.0)]
    assert backdoor_verdict(rows)["headline"] == "no request applied"


def test_amplification_is_the_paired_t_interval():
    from scipy import stats

    amp = amplification(_arm_rows(99.0, 30.0)).set_index("method").loc["retrain"]
    diffs = [30.0 + s - (21.0 + 2 * s) for s in range(3)]  # 9, 8, 7
    mean, sem = sum(diffs) / 3, stats.sem(diffs)
    lo, hi = stats.t.interval(0.95, 2, loc=mean, scale=sem)
    assert amp["diff"] == pytest.approx(mean) and amp["n"] == 3
    assert (amp["low"], amp["high"]) == (pytest.approx(lo), pytest.approx(hi))
    assert amp["amplifies"] == (lo > 0)
    # a difference whose interval reaches 0 does not amplify
    flat = amplification(_arm_rows(99.0, 22.0)).set_index("method").loc["retrain"]
    assert flat["low"] < 0 < flat["high"] and not flat["amplifies"]


def test_a_request_that_cannot_wake_is_refused_before_training(tmp_path, monkeypatch,
                                                                capsys):
    """Digits carry a 2x2 ink block at 5% almost everywhere, so the victim's own carriers
    swamp 18 poisons: the run stops with the numbers, before anything trains."""
    study = {"dataset": "digits", "model": "mlp", "train_size": 1000, "seeds": [0],
             "methods": ["retrain"], "conditions": ["attack", "none"],
             "trigger": {"kind": "mined", "size": 2, "carrier_rate": 0.05},
             "poisons_per_class": 2, "request": 30, "contribution": 0.3, "public": 400,
             "counterweights": 10, "strategy": "carriers", "poison_choice": "random",
             "defenses": {"nc": False, "cd": False, "ibau": False, "defense_size": 100},
             "device": "cpu"}
    err = refused_before_training(tmp_path, monkeypatch, capsys, study)
    assert "min_purity 0.8" in err and "poisons" in err


@pytest.mark.slow
def test_the_camouflage_arm_wakes_under_exact_deletion(tmp_path, monkeypatch):
    """The pipeline's positive control end to end: retrain and SISA deleting the camouflage
    wake the backdoor to near its poisons-only ceiling, a random request of the same size
    does not, and every row says its arm."""
    study = {"dataset": "digits", "model": "mlp", "train_size": None, "test_size": None,
             "seeds": [0], "arm": "camouflage", "methods": ["retrain", "sisa"],
             "conditions": ["attack", "random-equal", "carriers-first", "none"],
             "trigger": {"kind": "patch", "size": 3}, "poisons_per_class": 3,
             "camouflage": 2, "contribution": 0.3, "public": 0, "poison_choice": "random",
             "retrain_seeds": 1, "hparams": {"sisa": {"shards": 2, "slices": 2}},
             "defenses": {"nc": False, "cd": False, "ibau": False, "defense_size": 100},
             "device": "cpu"}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(study))
    monkeypatch.setenv("DORMANT_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out"
    assert main(["backdoor", str(path), "--out", str(out)]) == 0
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    by = {(r["method"], r["condition"]): r for r in rows}
    assert len(rows) == 2 * 3 + 1 and all(r["arm"] == "camouflage" for r in rows)
    dormant, ceiling = by["none", "none"]["asr_before"], by["none", "none"]["asr_ceiling"]
    # measured on digits: dormant 37, ceiling 98; retrain 99 and SISA 85 after the deletion
    assert ceiling >= 80 and dormant <= ceiling - 40
    for m in ("retrain", "sisa"):
        att, rnd = by[m, "attack"], by[m, "random-equal"]
        assert att["forget_size"] == rnd["forget_size"] == 54 == att["camouflage"]
        assert att["carriers"] == 54 and rnd["carriers"] == 0
        assert att["asr_after"] >= dormant + 40 and att["asr_after"] >= rnd["asr_after"] + 30
    assert by["retrain", "attack"]["asr_after"] >= ceiling - 10
    # SISA trains an ensemble of its own: its rows carry that ensemble's before, which the
    # verdict measures its rise from; retrain's before is the victim's
    own = by["sisa", "attack"]["asr_before_own"]
    assert own is not None and by["retrain", "attack"].get("asr_before_own") is None
    assert by["sisa", "random-equal"]["asr_before_own"] == own
    assert backdoor_verdict(rows)["methods"]["sisa"]["asr_before"] == pytest.approx(own)
    report = (out / "report.md").read_text()
    assert "camouflage, not clean" in report and "Was the backdoor armed?" in report
