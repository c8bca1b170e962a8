"""The checks of a deletion request, in numbers: the targeted universal perturbation finds a
BadNets shortcut a clean model lacks, the tamper test sees gradient ascent's knowledge come
back beyond the oracle's (excess against the oracle attacked the same way), and the
before/after record flags the backdoor's class only."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from dormant.defenses.universal_targets import TargetedUAPConfig, targeted_success
from dormant.engine import evaluate
from dormant.errors import DormantError
from dormant.metrics import aurc, end_mean
from dormant.requests.checks import (
    CheckBudget,
    Oracle,
    RequestData,
    backdoor_profile,
    model_state,
    run_checks,
    tamper_test,
)
from dormant.requests.policy import Policy, judge, verdict
from dormant.unlearn import unlearn


def _defender_ids(digits, n=200, seed=0):
    return torch.randperm(len(digits.y_test), generator=torch.Generator().manual_seed(seed))[:n]


def _request(prep, leakable=None) -> RequestData:
    s = prep.split
    return RequestData(prep.x, prep.y, prep.x_test, prep.y_test, s.heldout,
                       s.leakable if leakable is None else leakable, s.retain, prep.recipe, 10)


def test_targeted_uap_finds_the_badnets_shortcut(digits, digits_backdoor):
    ids = _defender_ids(digits)
    bad, clean = digits_backdoor["badnets"], digits_backdoor["clean"]
    # eps 0.2 cannot draw a digit (the clean model reaches class 0 on 20% of the images) but
    # goes a fifth of the way to the 3x3 patch, which the BadNets model already answers to:
    # measured 20.0% -> 60.0% for class 0, other classes within 8 points of the clean model
    cfg = TargetedUAPConfig(eps=0.2)
    s_bad = targeted_success(bad, digits.x_test, ids, 10, cfg, seed=0)
    s_clean = targeted_success(clean, digits.x_test, ids, 10, cfg, seed=0)
    assert s_bad[0] >= s_clean[0] + 30
    assert int((s_bad - s_clean).argmax()) == 0
    assert (s_bad - s_clean)[1:].max() < 15
    # a small budget reaches no class of a clean model universally (measured: all <= 12%)
    small = targeted_success(clean, digits.x_test, ids, 10, TargetedUAPConfig(eps=0.05), seed=0)
    assert small.max() < 15 and small.median() < 5
    # same seed, same numbers; eps 0 moves nothing (images already at t are never counted)
    assert torch.equal(s_bad, targeted_success(bad, digits.x_test, ids, 10, cfg, seed=0))
    zero = targeted_success(bad, digits.x_test, ids, 10, TargetedUAPConfig(eps=0.0), seed=0)
    assert torch.equal(zero, torch.zeros(10))


class _Always(nn.Module):
    """Predicts class 3 whatever the input: nothing can move it, and for class 3 every image
    is already there."""

    def __init__(self):
        super().__init__()
        self.w = nn.Linear(64, 10)
        with torch.no_grad():
            self.w.weight.zero_()
            self.w.bias.copy_(torch.arange(10) == 3)

    def forward(self, x):
        return self.w(x.flatten(1))


def test_targeted_uap_counts_only_images_it_has_to_move(digits):
    model = _Always().train()
    model.w.bias.requires_grad_(False)
    before = copy.deepcopy(model.state_dict())
    s = targeted_success(model, digits.x_test, torch.arange(40), 10, TargetedUAPConfig(steps=5))
    assert torch.isnan(s[3]) and torch.equal(s[torch.arange(10) != 3], torch.zeros(9))
    # handed back as it came: weights, mode and each parameter's own requires_grad
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.training
    assert model.w.weight.requires_grad and not model.w.bias.requires_grad
    with pytest.raises(DormantError, match="eps"):
        TargetedUAPConfig(eps=1.5)
    with pytest.raises(DormantError, match="at least 2"):
        targeted_success(model, digits.x_test, torch.arange(1), 10)


def test_tamper_test_brings_gradient_ascent_back_not_the_oracle(digits_setup):
    prep = digits_setup
    stop = evaluate(prep.oracle, prep.x, prep.y, prep.split.leakable).acc
    ga = unlearn("gradient_ascent", prep.original, prep.unlearn_data(), prep.context(None),
                 steps=200, lr=1e-4, stop_acc=stop)
    data = _request(prep)
    budget = CheckBudget(relearn_steps=60, eval_every=10, leaked_k=5)
    got = tamper_test(ga, data, budget, oracle=Oracle("the study's oracle", prep.oracle))
    oracle = tamper_test(prep.oracle, data, budget, oracle=Oracle.itself())
    # measured: GA 40.0 -> 97.1 (k=0) and -> 100 (k=5); the oracle 31.4 -> 37.1 and -> 42.9
    for key in ("k0", "k5"):
        g, o = got[key], oracle[key]
        assert g["recovery"] >= 40  # a column still, now judging nothing
        # the oracle's columns are the oracle's own attack, run with the same budget and seed
        assert (g["oracle_start"], g["oracle_end"]) == (o["start"], o["end"])
        assert g["oracle_forget_acc"] == o["forget_acc"]
        assert g["excess"] == pytest.approx(g["end"] - o["end"], abs=1e-3)
        assert g["excess_max"] == pytest.approx(g["best"] - o["best"], abs=1e-3)
        assert g["forget_gap"] == pytest.approx(g["start"] - o["start"], abs=1e-3)
        # one attack seed has no interval: the verdict waits, the policy's level fails it
        assert g["excess"] >= 30 and g["verdict"] == "inconclusive"
        assert g["oracle"] == "the study's oracle"
        # the oracle against itself: excess exactly 0, resists
        assert (o["excess"], o["excess_max"], o["forget_gap"]) == (0.0, 0.0, 0.0)
        assert o["verdict"] == "resists" and o["oracle"] == "the new model (retrain)"
    for key, k in (("k0", 0), ("k5", 5)):
        t = got[key]
        start = evaluate(ga, prep.x, prep.y, prep.split.heldout).acc
        assert t["k"] == k and t["start"] == pytest.approx(start, abs=1e-4)
        assert t["steps"] == list(range(0, 61, 10)) and t["forget_acc"][0] == t["start"]
        assert t["test_steps"] == [0, 60] and len(t["test_acc"]) == 2
        assert t["best"] == max(t["forget_acc"][1:])
        assert t["end"] == pytest.approx(end_mean(t["forget_acc"][1:]), abs=1e-3)
        assert t["recovery"] == pytest.approx(t["best"] - t["start"], abs=1e-3)
        assert t["aurc"] == pytest.approx(aurc(t["steps"], t["forget_acc"], t["start"]),
                                          abs=1e-3)
    json.dumps(got)  # the record is plain JSON
    # without an oracle: the attack's own numbers and no verdict
    alone = tamper_test(ga, data, budget.model_copy(update={"leaked_k": 0}))
    assert alone["k0"]["end"] == got["k0"]["end"]
    assert alone["k0"]["verdict"] is None and alone["k0"]["no_verdict"] == "no oracle: no verdict"


def test_tamper_test_leaks_at_most_what_is_leakable(digits_setup):
    prep = digits_setup
    few = prep.split.leakable[:3]
    got = tamper_test(prep.oracle, _request(prep, few), CheckBudget(relearn_steps=10,
                                                                    leaked_k=50))
    assert set(got) == {"k0", "k50"} and got["k50"]["k"] == 3
    none = tamper_test(prep.oracle, _request(prep), CheckBudget(relearn_steps=10, leaked_k=0))
    assert set(none) == {"k0"}


def test_model_state_measures_what_unlearning_changed(digits_setup):
    prep = digits_setup
    data = _request(prep)
    stop = evaluate(prep.oracle, prep.x, prep.y, prep.split.leakable).acc
    ga = unlearn("gradient_ascent", prep.original, prep.unlearn_data(), prep.context(None),
                 steps=200, lr=1e-4, stop_acc=stop)
    skip = {"nc_norms": [], "uap_success": []}  # a cached profile: nothing recomputed
    before = model_state(prep.original, data, CheckBudget(), known=skip)
    after = model_state(ga, data, CheckBudget(), known=skip)
    assert before["forget_acc"] == pytest.approx(
        evaluate(prep.original, prep.x, prep.y, prep.split.heldout).acc, abs=1e-4)
    assert before["retain_acc"] == pytest.approx(
        evaluate(prep.original, prep.x, prep.y, prep.split.retain).acc, abs=1e-4)
    # measured: held-out forget accuracy 100 -> 40, retain barely moves
    assert after["forget_acc"] <= before["forget_acc"] - 40
    assert after["retain_acc"] >= before["retain_acc"] - 5
    assert 0 <= after["mia_auc"] <= 1 and after["nc_norms"] == []


def test_run_checks_flags_the_backdoor_class_and_nothing_on_a_clean_update(digits_setup,
                                                                           digits_backdoor):
    prep = digits_setup
    data = _request(prep)
    clean, bad = digits_backdoor["clean"], digits_backdoor["badnets"]
    budget = CheckBudget(relearn_steps=20, leaked_k=0, uap={"eps": 0.2}, nc={"epochs": 30})
    cached = backdoor_profile(clean, data, budget)
    m = run_checks(clean, bad, data, budget, old_known=cached)
    assert set(m) == {"before", "after", "tamper", "change", "evidence", "budget"}
    assert m["budget"] == budget.model_dump() and set(m["tamper"]) == {"k0"}
    assert len(m["before"]["nc_norms"]) == len(m["after"]["uap_success"]) == 10
    json.dumps(m)
    checks = {c.name: c for c in judge(Policy(), m)}
    # measured: class 0's norm 13.0 -> 4.9 (-62%), its success 20% -> 60%; no other class
    # passes a warn level
    assert checks["uap_jump"].classes == [0] and checks["uap_jump"].status == "fail"
    assert checks["nc_shrink"].classes == [0] and checks["nc_shrink"].value > 0.5
    assert "excess_leaked" not in checks
    # no oracle was given: the tamper check has no value and says so
    assert checks["excess"].value != checks["excess"].value  # NaN
    assert checks["excess"].detail.endswith("no oracle: no verdict")
    # clean -> clean: the same model measures the same, so nothing is flagged
    same = run_checks(clean, copy.deepcopy(clean), data, budget, old_known=cached)
    assert same["after"] == same["before"]
    judged = judge(Policy(), same)
    assert verdict(judged) == "pass" and not any(c.classes for c in judged)


@pytest.mark.slow
def test_the_lira_check_passes_the_oracle_fails_the_original_and_keeps_no_shadow(
        digits_setup, tmp_path, monkeypatch):
    """Levels (warn 0.65, fail 0.75 on max(AUC, 1 - AUC)) were set from the study's oracle on
    digits seeds 0-3 with 8 shadows (AUC 0.40-0.47: at most 0.60 either way)."""
    import tempfile

    from dormant.requests.policy import lira_auc

    prep = digits_setup
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the shadows live
    data = RequestData(prep.x, prep.y, prep.x_test, prep.y_test, prep.split.heldout,
                       prep.split.leakable, prep.split.retain, prep.recipe, 10, prep.spec)
    budget = CheckBudget(lira_shadows=8, relearn_steps=10, leaked_k=0)
    known = {"nc_norms": [], "uap_success": [], "retain_acc": 100.0, "test_acc": 100.0}
    m = run_checks(prep.original, prep.oracle, data, budget, oracle=Oracle.itself(),
                   old_known=known, new_known=known)
    check = next(c for c in judge(Policy(budget=budget.model_dump()), m)
                 if c.name == "lira_auc")
    assert m["before"]["lira_auc"] >= 0.95 and m["before"]["mia_shadows"] == 8
    assert m["after"]["lira_auc"] == pytest.approx(0.5, abs=0.15)
    assert check.status == "pass" and "8 shadows, global variance" in check.detail
    # nothing forgotten: the new model is the old one, its AUC the old one's
    kept = lira_auc(Policy().thresholds("lira_auc"),
                    {**m, "after": {**m["after"], **{k: m["before"][k] for k in (
                        "lira_auc", "lira_tpr_at_1pct")}}})[0]
    assert kept.status == "fail" and kept.value >= 0.95
    assert list(tmp_path.iterdir()) == []  # trained on the deleted ids: never kept
    with pytest.raises(ValueError, match="lira_shadows 2: use 0"):
        CheckBudget(lira_shadows=2)
    off = run_checks(prep.original, prep.oracle, _request(prep), CheckBudget(
        relearn_steps=10, leaked_k=0), old_known={"nc_norms": [], "uap_success": []},
                     new_known={"nc_norms": [], "uap_success": []})
    assert "lira_auc" not in off["after"]
    assert not [c for c in judge(Policy(), off) if c.name == "lira_auc"]
