"""The deletion-request policy: defaults, YAML errors named precisely, the warn/fail
boundaries, the verdict, and per-class backdoor flags."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
from pydantic import ValidationError

from dormant.errors import DormantError
from dormant.requests.checks import CheckBudget
from dormant.requests.policy import Check, Policy, judge, load_policy, verdict

BASE = {
    "before": {"retain_acc": 99.0, "test_acc": 96.0, "forget_acc": 100.0, "mia_auc": 0.7,
               "nc_norms": [10.0] * 10, "uap_success": [20.0] * 10},
    "after": {"retain_acc": 99.0, "test_acc": 96.0, "forget_acc": 90.0, "mia_auc": 0.5,
              "nc_norms": [10.0] * 10, "uap_success": [20.0] * 10},
    "tamper": {"k0": {"k": 0, "start": 90.0, "best": 91.0, "recovery": 1.0, "aurc": 0.5},
               "k5": {"k": 5, "start": 90.0, "best": 92.0, "recovery": 2.0, "aurc": 1.0}},
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
        "retain_drop", "test_drop", "forget_gap", "mia_auc", "recovery", "recovery_leaked",
        "nc_shrink", "uap_jump")}
    assert levels == {"retain_drop": (2, 5), "test_drop": (2, 5), "forget_gap": (5, 10),
                      "mia_auc": (0.6, 0.7), "recovery": (10, 20), "recovery_leaked": (15, 30),
                      "nc_shrink": (0.3, 0.5), "uap_jump": (15, 30)}
    assert p.check_budget() == CheckBudget()
    d = p.to_dict()
    assert d["budget"]["relearn_steps"] == 100 and d["recovery"] == {"warn": 10, "fail": 20}
    json.dumps(d)
    # everything in BASE is within the defaults
    assert verdict(judge(p, BASE)) == "pass"
    # the documented example file spells out exactly the defaults
    example = Path(__file__).resolve().parents[1] / "configs" / "policy.yaml"
    assert load_policy(example) == p


def test_yaml_overrides_keep_the_other_defaults(tmp_path):
    p = load_policy(_write(tmp_path, "recovery: {warn: 5}\nuap_jump: {fail: null}\n"
                                     "budget: {relearn_steps: 7, relearn_lr: 1e-3}\n"))
    assert (p.recovery.warn, p.recovery.fail) == (5, 20)
    assert (p.uap_jump.warn, p.uap_jump.fail) == (15, None)
    b = p.check_budget()
    assert (b.relearn_steps, b.relearn_lr, b.leaked_k) == (7, 1e-3, 5)
    with pytest.raises(ValidationError, match="frozen"):
        p.recovery = None


@pytest.mark.parametrize("text, message", [
    ("recovry: {warn: 1}\n", "policy.yaml: unknown key 'recovry'; known keys: retain_drop, "
                             "test_drop, forget_gap, mia_auc, recovery, recovery_leaked, "
                             "nc_shrink, uap_jump, budget"),
    ("budget: {relearn_stepz: 1}\n", "unknown key 'budget.relearn_stepz'; known keys: "
                                     "relearn_steps, relearn_lr"),
    ("retain_drop: {wrn: 1}\n", "unknown key 'retain_drop.wrn'; known keys: warn, fail"),
])
def test_unknown_key_is_named(tmp_path, text, message):
    with pytest.raises(DormantError) as e:
        load_policy(_write(tmp_path, text))
    assert message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("text, message", [
    ("retain_drop: {warn: abc}\n", "key 'retain_drop.warn': Input should be a valid number"),
    ("budget: {relearn_steps: 0}\n", "key 'budget': check budget: relearn_steps must be at "
                                     "least 1"),
    ("budget: {uap_eps: 2}\n", "uap_eps is an L-inf budget in [0, 1]"),
    ("mia_auc: {warn: 0.8}\n", "key 'mia_auc': warn (0.8) must not be above fail (0.7)"),
    ("recovery: 10\n", "key 'recovery': Input should be a valid dictionary"),
    ("- recovery\n", "a policy is a mapping"),
    ("recovery: {warn: [\n", "not valid YAML (line 2)"),
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
    ("recovery", {"tamper__k0__recovery": 10.0}, "pass"),
    ("recovery", {"tamper__k0__recovery": 15.0}, "warn"),
    ("recovery", {"tamper__k0__recovery": 25.0}, "fail"),
    ("recovery_leaked", {"tamper__k5__recovery": 20.0}, "warn"),
    ("recovery_leaked", {"tamper__k5__recovery": 31.0}, "fail"),
    ("recovery_leaked", {"tamper__k5__recovery": 15.0}, "pass"),
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
    assert c["recovery_leaked"].value == 2.0 and "k=5" in c["recovery_leaked"].detail


def test_null_threshold_never_trips(tmp_path):
    p = load_policy(_write(tmp_path, "recovery: {warn: null, fail: null}\n"))
    assert _by_name(judge(p, _m(tamper__k0__recovery=99.0)))["recovery"].status == "pass"


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
    assert "recovery" in names and "recovery_leaked" not in names
    assert names == ["retain_drop", "test_drop", "forget_gap", "mia_auc", "recovery",
                     "nc_shrink", "uap_jump"]
