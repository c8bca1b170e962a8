"""The deletion-request policy: defaults, YAML errors named precisely (a renamed key too), the
warn/fail boundaries, the tamper checks on excess against the oracle, the verdict, and
per-class backdoor flags."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
from pydantic import ValidationError

from dormant.errors import DormantError
from dormant.experiments.verdicts import RELEARN_EXCESS
from dormant.requests.checks import CheckBudget, against
from dormant.requests.policy import Check, Policy, judge, load_policy, verdict

BASE = {
    "before": {"retain_acc": 99.0, "test_acc": 96.0, "forget_acc": 100.0, "mia_auc": 0.7,
               "nc_norms": [10.0] * 10, "uap_success": [20.0] * 10},
    "after": {"retain_acc": 99.0, "test_acc": 96.0, "forget_acc": 90.0, "mia_auc": 0.5,
              "nc_norms": [10.0] * 10, "uap_success": [20.0] * 10},
    # the new model and its oracle both start at 90; the attack ends 1 and 2 points above
    "tamper": {"k0": {"k": 0, "start": 90.0, "best": 91.0, "end": 90.5, "recovery": 1.0,
                      "aurc": 0.5, "oracle": "o", "oracle_start": 90.0, "oracle_end": 89.5,
                      "excess": 1.0, "excess_max": 1.0, "forget_gap": 0.0,
                      "verdict": "inconclusive"},
               "k5": {"k": 5, "start": 90.0, "best": 92.0, "end": 91.5, "recovery": 2.0,
                      "aurc": 1.0, "oracle": "o", "oracle_start": 90.0, "oracle_end": 89.5,
                      "excess": 2.0, "excess_max": 2.0, "forget_gap": 0.0,
                      "verdict": "inconclusive"}},
    "budget": {},
}


def _m(**paths) -> dict:
    """BASE with ``after__test_acc=95`` style overrides."""
    m = copy.deepcopy(BASE)
    for path, v in paths.items():
        *head, last = path.split("__")
        d = m
        for p in head:
            d = d[p]
        d[last] = v
    return m


def _by_name(checks: list[Check]) -> dict[str, Check]:
    return {c.name: c for c in checks}


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "policy.yaml"
    p.write_text(text)
    return p


def test_defaults(tmp_path):
    p = load_policy(None)
    assert p == Policy() == load_policy(_write(tmp_path, ""))
    levels = {name: (getattr(p, name).warn, getattr(p, name).fail) for name in (
        "retain_drop", "test_drop", "forget_gap", "mia_auc", "excess", "excess_leaked",
        "nc_shrink", "uap_jump")}
    assert levels == {"retain_drop": (2, 5), "test_drop": (2, 5), "forget_gap": (5, 10),
                      "mia_auc": (0.6, 0.7), "excess": (5, 10), "excess_leaked": (10, 15),
                      "nc_shrink": (0.3, 0.5), "uap_jump": (15, 30)}
    assert p.excess.fail == RELEARN_EXCESS  # fails where the verdict says "relearns"
    assert p.check_budget() == CheckBudget()
    d = p.to_dict()
    assert d["budget"]["relearn_steps"] == 100 and d["excess"] == {"warn": 5, "fail": 10}
    json.dumps(d)
    # everything in BASE is within the defaults
    assert verdict(judge(p, BASE)) == "pass"
    # the documented example file spells out exactly the defaults
    example = Path(__file__).resolve().parents[1] / "configs" / "policy.yaml"
    assert load_policy(example) == p


def test_yaml_overrides_keep_the_other_defaults(tmp_path):
    p = load_policy(_write(tmp_path, "excess: {warn: 3}\nuap_jump: {fail: null}\n"
                                     "budget: {relearn_steps: 7, relearn_lr: 1e-3}\n"))
    assert (p.excess.warn, p.excess.fail) == (3, 10)
    assert (p.uap_jump.warn, p.uap_jump.fail) == (15, None)
    b = p.check_budget()
    assert (b.relearn_steps, b.relearn_lr, b.leaked_k) == (7, 1e-3, 5)
    # a defense's budget is that defense's own config, layered over the cpu preset
    nc = load_policy(_write(tmp_path, "budget: {nc: {epochs: 5}}\n")).check_budget().nc
    assert (nc.epochs, nc.batch_size, nc.images) == (5, 32, 200)
    with pytest.raises(ValidationError, match="frozen"):
        p.excess = None


@pytest.mark.parametrize("text, message", [
    ("recovry: {warn: 1}\n", "policy.yaml: unknown key 'recovry'; known keys: retain_drop, "
                             "test_drop, forget_gap, mia_auc, lira_auc, unchanged, excess, "
                             "excess_leaked, nc_shrink, uap_jump, budget"),
    ("budget: {relearn_stepz: 1}\n", "key 'budget.relearn_stepz': unknown key"),
    ("retain_drop: {wrn: 1}\n", "key 'retain_drop.wrn': unknown key"),
    # the budgets of the defenses are their own configs now, nested (issue 12)
    ("budget: {nc_epochs: 30}\n", "key 'budget.nc_epochs': unknown key"),
    ("budget: {nc: {epoch: 30}}\n", "key 'budget.nc.epoch': unknown key"),
])
def test_unknown_key_is_named(tmp_path, text, message):
    with pytest.raises(DormantError) as e:
        load_policy(_write(tmp_path, text))
    assert message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("text, message", [
    ("retain_drop: {warn: abc}\n", "key 'retain_drop.warn': Input should be a valid number"),
    ("budget: {relearn_steps: 0}\n", "key 'budget.relearn_steps': Input should be greater "
                                     "than or equal to 1"),
    ("budget: {uap: {eps: 2}}\n", "key 'budget.uap.eps': Input should be less than or equal "
                                  "to 1"),
    ("budget: {nc: {epochs: 0}}\n", "key 'budget.nc.epochs': Input should be greater than or "
                                    "equal to 1"),
    ("retain_drop: {warn: .nan}\n", "key 'retain_drop.warn': must be a finite number"),
    ("mia_auc: {warn: 0.8}\n", "key 'mia_auc': warn (0.8) must not be above fail (0.7)"),
    ("excess: 10\n", "key 'excess': Input should be a valid dictionary"),
    ("- excess\n", "a policy is a mapping"),
    ("excess: {warn: [\n", "policy.yaml is not valid YAML"),
    ("excess: {warn: 1}\nexcess: {warn: 2}\n", "key 'excess' appears twice (line 2)"),
])
def test_bad_value_is_one_line_naming_the_key(tmp_path, text, message):
    with pytest.raises(DormantError) as e:
        load_policy(_write(tmp_path, text))
    assert message in str(e.value) and "\n" not in str(e.value)


def test_missing_file(tmp_path):
    with pytest.raises(DormantError, match="does not exist"):
        load_policy(tmp_path / "nope.yaml")


@pytest.mark.parametrize("name, paths, status", [
    # a value must go over a threshold to trip it
    ("retain_drop", {"after__retain_acc": 97.0}, "pass"),  # drop 2.0 = warn
    ("retain_drop", {"after__retain_acc": 96.9}, "warn"),  # 2.1
    ("retain_drop", {"after__retain_acc": 94.0}, "warn"),  # 5.0 = fail
    ("retain_drop", {"after__retain_acc": 93.9}, "fail"),
    ("retain_drop", {"after__retain_acc": 100.0}, "pass"),  # a gain is no drop
    ("test_drop", {"after__test_acc": 93.5}, "warn"),
    ("test_drop", {"after__test_acc": 90.0}, "fail"),
    ("forget_gap", {"after__forget_acc": 101.0}, "pass"),  # 96 + 5 = warn exactly
    ("forget_gap", {"after__forget_acc": 101.5}, "warn"),
    ("forget_gap", {"after__forget_acc": 106.5}, "fail"),
    ("mia_auc", {"after__mia_auc": 0.6}, "pass"),
    ("mia_auc", {"after__mia_auc": 0.65}, "warn"),
    ("mia_auc", {"after__mia_auc": 0.71}, "fail"),
    ("excess", {"tamper__k0__excess": 5.0}, "pass"),
    ("excess", {"tamper__k0__excess": 7.5}, "warn"),
    ("excess", {"tamper__k0__excess": 10.0}, "warn"),
    ("excess", {"tamper__k0__excess": 10.1}, "fail"),
    ("excess", {"tamper__k0__excess": -30.0}, "pass"),  # ending below the oracle is no alarm
    # recovery judges nothing any more: a large one with no excess passes
    ("excess", {"tamper__k0__recovery": 60.0, "tamper__k0__best": 150.0}, "pass"),
    ("excess_leaked", {"tamper__k5__excess": 12.0}, "warn"),
    ("excess_leaked", {"tamper__k5__excess": 15.5}, "fail"),
    ("excess_leaked", {"tamper__k5__excess": 10.0}, "pass"),
])
def test_boundaries(name, paths, status):
    got = _by_name(judge(Policy(), _m(**paths)))[name]
    assert got.status == status
    assert (got.warn, got.fail) == (getattr(Policy(), name).warn, getattr(Policy(), name).fail)


def test_values_and_details():
    c = _by_name(judge(Policy(), _m(after__retain_acc=96.0, after__forget_acc=97.0)))
    assert c["retain_drop"].value == pytest.approx(3.0) and c["retain_drop"].group == "utility"
    assert c["retain_drop"].detail == "retain acc 99.0 -> 96.0 (-3.0 points)"
    assert c["forget_gap"].value == pytest.approx(1.0)
    assert c["excess_leaked"].value == 2.0 and c["excess_leaked"].group == "tamper"
    assert c["excess_leaked"].detail == ("k=5: forget 90.0 -> 91.5 at the attack's end, oracle "
                                         "90.0 -> 89.5: excess +2.0, forget gap +0.0: inconclusive")


def test_null_threshold_never_trips(tmp_path):
    p = load_policy(_write(tmp_path, "excess: {warn: null, fail: null}\n"))
    assert _by_name(judge(p, _m(tamper__k0__excess=99.0)))["excess"].status == "pass"


@pytest.mark.parametrize("old, new", [("recovery", "excess"),
                                      ("recovery_leaked", "excess_leaked")])
def test_a_policy_still_using_recovery_is_told_the_new_name(tmp_path, old, new, capsys):
    path = _write(tmp_path, f"{old}: {{warn: 10, fail: 20}}\n")
    with pytest.raises(DormantError) as e:
        load_policy(path)
    msg = str(e.value)
    assert msg.startswith(f"policy file {path}: key {old!r} was renamed to {new!r}")
    assert "\n" not in msg
    # through the CLI: one line on stderr, exit 2, before any data is loaded
    from dormant.cli import main

    ids = tmp_path / "ids.txt"
    ids.write_text("1\n")
    assert main(["forget", "--store", str(tmp_path / "nostore"), "--model", "m", "--ids",
                 str(ids), "--requester", "a", "--reason", "r", "--policy", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert f"was renamed to {new!r}" in err and len(err.splitlines()) == 1


def _block(start: float, end: float, oracle_start: float, oracle_end: float) -> dict:
    """A tamper block as ``checks.against`` builds it from the two attacks' numbers."""
    own = {"k": 0, "start": start, "end": end, "best": end + 1, "recovery": end + 1 - start,
           "aurc": 0.0, "forget_acc": [start, end]}
    ref = {"k": 0, "start": oracle_start, "end": oracle_end, "best": oracle_end + 1,
           "forget_acc": [oracle_start, oracle_end]}
    return against(own, ref, "a retrain")


def test_over_forgetting_warns_and_never_fails_as_relearning():
    # starts 20 below the oracle (forget gap -20 < -15), ends 12 below it; recovery from its
    # own start is +33, which the old rule failed as relearning (over 20)
    b = _block(start=40.0, end=72.0, oracle_start=60.0, oracle_end=84.0)
    assert (b["forget_gap"], b["excess"], b["verdict"]) == (-20.0, -12.0, "over-forgets")
    assert b["recovery"] == 33.0
    c = _by_name(judge(Policy(), _m(tamper__k0=b)))["excess"]
    assert c.value == -12.0 and c.status == "warn"
    assert c.detail == ("k=0: forget 40.0 -> 72.0 at the attack's end, oracle 60.0 -> 84.0: "
                        "excess -12.0, forget gap -20.0: over-forgets")
    # even with the excess levels turned off it still warns; it never fails
    off = Policy(excess={"warn": None, "fail": None})
    assert _by_name(judge(off, _m(tamper__k0=b)))["excess"].status == "warn"
    # the same attack from the oracle's start (gap within 15) passes; one attack seed has no
    # interval, so its verdict is inconclusive rather than "resists"
    ok = _block(start=55.0, end=72.0, oracle_start=60.0, oracle_end=84.0)
    assert ok["verdict"] == "inconclusive"
    assert _by_name(judge(Policy(), _m(tamper__k0=ok)))["excess"].status == "pass"
    # not forgetting (gap +20) warns as well
    kept = _block(start=80.0, end=84.0, oracle_start=60.0, oracle_end=84.0)
    assert kept["verdict"] == "does-not-forget"
    assert _by_name(judge(Policy(), _m(tamper__k0=kept)))["excess"].status == "warn"


def test_an_excess_of_12_fails_as_relearning():
    # the policy's level fails it; the verdict of one attack seed stays inconclusive
    b = _block(start=58.0, end=96.0, oracle_start=60.0, oracle_end=84.0)
    assert (b["forget_gap"], b["excess"], b["verdict"]) == (-2.0, 12.0, "inconclusive")
    c = _by_name(judge(Policy(), _m(tamper__k0=b)))
    assert c["excess"].value == 12.0 and c["excess"].status == "fail"
    assert c["excess"].detail.endswith("excess +12.0, forget gap -2.0: inconclusive")
    assert verdict(list(c.values())) == "fail"
    # with k leaked ids 12 points warn (fail over 15)
    leaked = {**b, "k": 5}
    assert _by_name(judge(Policy(), _m(tamper__k5=leaked)))["excess_leaked"].status == "warn"


def test_the_new_model_as_its_own_oracle_resists_with_excess_zero():
    b = against({"k": 0, "start": 31.4, "end": 37.1, "best": 40.0, "recovery": 8.6,
                 "aurc": 3.0, "forget_acc": [31.4, 37.1]}, None, "the new model (retrain)")
    assert (b["excess"], b["excess_max"], b["forget_gap"]) == (0.0, 0.0, 0.0)
    assert b["verdict"] == "resists" and b["oracle_end"] == 37.1
    assert "oracle_forget_acc" not in b  # no second curve: it is the same one
    assert _by_name(judge(Policy(), _m(tamper__k0=b)))["excess"].status == "pass"


def test_no_oracle_means_no_verdict_not_a_recovery_verdict():
    b = against({"k": 0, "start": 10.0, "end": 90.0, "best": 95.0, "recovery": 85.0,
                 "aurc": 50.0, "forget_acc": [10.0, 90.0]}, None, None)
    assert b["verdict"] is None and b["excess"] is None and b["oracle"] is None
    c = _by_name(judge(Policy(), _m(tamper__k0=b)))["excess"]
    assert math.isnan(c.value) and c.status == "pass" and c.to_dict()["value"] is None
    assert c.detail == "k=0: forget 10.0 -> 90.0 at the attack's end; no oracle: no verdict"


def test_verdict_is_the_worst():
    def c(status):
        return Check("x", "g", 0.0, None, None, status, "")

    assert verdict([]) == "pass"
    assert verdict([c("pass"), c("pass")]) == "pass"
    assert verdict([c("pass"), c("warn"), c("pass")]) == "warn"
    assert verdict([c("warn"), c("fail"), c("pass")]) == "fail"
    assert verdict(judge(Policy(), _m(after__mia_auc=0.65, after__test_acc=80.0))) == "fail"
    assert verdict(judge(Policy(), _m(after__mia_auc=0.65))) == "warn"


def test_backdoor_checks_flag_exactly_the_class_that_moved():
    norms = [10.0] * 10
    norms[3], norms[7] = 4.0, 8.0  # class 3 shrinks 60% (over fail), class 7 20% (under warn)
    uap = [20.0] * 10
    uap[5], uap[1] = 40.0, 30.0  # class 5 jumps 20 points (warn), class 1 10 (under warn)
    uap[9] = 55.0  # class 9 jumps 35 points: over fail
    c = _by_name(judge(Policy(), _m(after__nc_norms=norms, after__uap_success=uap)))
    nc, jump = c["nc_shrink"], c["uap_jump"]
    assert nc.classes == [3] and nc.status == "fail" and nc.value == pytest.approx(0.6)
    assert nc.detail == "class 3: norm 10.0 -> 4.0 (-60%)" and nc.group == "backdoor"
    assert jump.classes == [9] and jump.status == "fail" and jump.value == pytest.approx(35.0)
    assert jump.detail == "class 9: success 20.0% -> 55.0% (+35.0 points)"
    # a class between warn and fail makes the check warn but is not named a suspect
    uap[9] = 20.0
    jump = _by_name(judge(Policy(), _m(after__uap_success=uap)))["uap_jump"]
    assert jump.classes == [] and jump.status == "warn"
    assert jump.detail.startswith("class 5: success 20.0% -> 40.0% (+20.0 points)")
    # two classes over fail are both flagged; the worst one sets the value and the status
    norms[7] = 4.5
    nc = _by_name(judge(Policy(), _m(after__nc_norms=norms)))["nc_shrink"]
    assert nc.classes == [3, 7] and nc.value == pytest.approx(0.6)
    # with no fail level, warn is the flag level
    nc = _by_name(judge(Policy(nc_shrink={"warn": 0.1, "fail": None}),
                        _m(after__nc_norms=norms)))["nc_shrink"]
    assert nc.classes == [3, 7] and nc.status == "warn"
    # a growing norm or a falling success is no alarm
    quiet = _by_name(judge(Policy(), _m(after__nc_norms=[20.0] * 10,
                                        after__uap_success=[0.0] * 10)))
    assert quiet["nc_shrink"].classes == quiet["uap_jump"].classes == []
    assert quiet["nc_shrink"].status == quiet["uap_jump"].status == "pass"


def test_unmeasured_classes_are_skipped():
    uap = [None] * 10
    uap[2] = 51.0  # +31 points: over fail
    c = _by_name(judge(Policy(), _m(after__uap_success=uap)))["uap_jump"]
    assert c.classes == [2] and c.status == "fail"
    none = _by_name(judge(Policy(), _m(after__uap_success=[None] * 10)))["uap_jump"]
    assert math.isnan(none.value) and none.status == "pass"
    assert none.to_dict()["value"] is None and "not measured" in none.detail
    json.dumps(none.to_dict())


def test_a_missing_tamper_block_has_no_check():
    m = _m()
    del m["tamper"]["k5"]
    names = [c.name for c in judge(Policy(), m)]
    assert "excess" in names and "excess_leaked" not in names
    assert names == ["retain_drop", "test_drop", "forget_gap", "mia_auc", "excess",
                     "nc_shrink", "uap_jump"]
