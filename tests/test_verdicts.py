"""The verdict rules: the end statistic, excess and r against the same cell's oracle, the
paired intervals, and the five verdicts: leftover knowledge is never scored as relearning,
and an interval that reaches the bar is inconclusive, not "resists"."""

from __future__ import annotations

import math

import pytest

from dormant.experiments.verdicts import (
    classify,
    interval,
    relearning_shown,
    verdicts,
    why,
    with_excess,
)
from dormant.metrics import end_mean


def _row(method, seed, forget, curve, k=0, **extra):
    return {"status": "ok", "method": method, "seed": seed, "forget": "class:0:atypical:0.2",
            "k": k, "relearn_set": "retain", "attack_lr": 1e-4, "attack_steps": 80,
            "forget_acc": forget, "curve_forget_acc": curve,
            "forget_acc_attacked": max(curve), "recovery": max(curve) - forget, **extra}


def test_end_mean_is_the_last_13_percent_with_at_least_three_points():
    # 391 points, as the seed's 3,910 steps evaluated every 10: exactly the last 50
    assert end_mean([0.0] * 341 + [100.0] * 50) == 100.0
    assert end_mean([0.0] * 342 + [100.0] * 49) == pytest.approx(100 * 49 / 50)
    assert end_mean([0.0] * 340 + [50.0] + [100.0] * 50) == 100.0
    # short curves: at least 3 points, and never more than there are
    assert end_mean([10.0, 20.0, 30.0, 40.0, 50.0]) == pytest.approx(40.0)
    assert end_mean([7.0, 9.0]) == pytest.approx(8.0)
    assert math.isnan(end_mean([]))
    # a single lucky spike moves the maximum, not the end
    spiky = [50.0] * 40 + [100.0] + [50.0] * 59
    assert max(spiky) == 100.0 and end_mean(spiky) == 50.0


def test_excess_is_the_end_minus_the_oracles_end_in_the_same_cell():
    rows = [
        _row("retrain", 0, 70.0, [72.0, 74.0, 75.0, 76.0, 76.0, 76.0]),
        _row("retrain", 1, 60.0, [60.0, 61.0, 62.0, 62.0, 62.0, 62.0]),
        _row("ga", 0, 72.0, [90.0, 100.0, 96.0, 96.0, 96.0, 96.0]),
        _row("ga", 1, 62.0, [80.0, 90.0, 92.0, 92.0, 92.0, 92.0]),
        # a cell the oracle never ran: no excess, rather than a wrong one
        _row("ga", 0, 72.0, [100.0] * 6, k=5),
    ]
    out = {(r["method"], r["seed"], r["k"]): r for r in with_excess(rows)}
    assert out["ga", 0, 0]["excess"] == pytest.approx(96.0 - 76.0)
    assert out["ga", 1, 0]["excess"] == pytest.approx(92.0 - 62.0)  # seed 1's own oracle
    assert out["ga", 0, 0]["excess_max"] == pytest.approx(100.0 - 76.0)
    assert out["ga", 0, 0]["forget_gap"] == pytest.approx(2.0)
    assert out["retrain", 0, 0]["excess"] == 0.0
    assert out["ga", 0, 5]["excess"] is None


def test_a_tar_like_row_over_forgets_and_is_not_called_relearning():
    """The MNIST study's tar: 0 -> 63.8 after the attack (recovery +63.8) while the oracle
    goes 72 -> 76; it ends 12 points *below* the attacked oracle."""
    rows = []
    for seed, (o0, o1, t1) in enumerate([(72.0, 76.0, 63.8), (73.0, 75.0, 62.0),
                                         (71.0, 77.0, 65.0)]):
        rows.append(_row("retrain", seed, o0, [o0 + 2, o1, o1, o1]))
        rows.append(_row("tar", seed, 0.0, [40.0, t1, t1, t1]))
    found = {v.method: v for v in verdicts(rows)}
    tar = found["tar"]
    assert tar.verdict == "over-forgets"
    assert tar.excess < -10  # it ends below the oracle, however large its recovery
    assert found["retrain"].verdict == "resists" and found["retrain"].excess == 0.0


def test_r_is_paired_seed_by_seed():
    """r = (method end - method start) - (oracle end - oracle start), each seed against its
    own oracle: here the oracles move differently (+2, +10) and so must r."""
    rows = [_row("retrain", 0, 60.0, [62.0] * 5), _row("retrain", 1, 50.0, [60.0] * 5),
            _row("ga", 0, 40.0, [90.0] * 5), _row("ga", 1, 45.0, [80.0] * 5)]
    out = {(r["method"], r["seed"]): r for r in with_excess(rows)}
    assert out["ga", 0]["r"] == pytest.approx((90 - 40) - (62 - 60))
    assert out["ga", 1]["r"] == pytest.approx((80 - 45) - (60 - 50))
    assert out["ga", 0]["r"] == pytest.approx(out["ga", 0]["excess"]
                                              - out["ga", 0]["forget_gap"])
    # the share of forgotten knowledge back: excess over the oracle's headroom
    assert out["ga", 0]["share"] == pytest.approx((90 - 62) / (100 - 62), abs=1e-4)
    v = next(v for v in verdicts(rows) if v.method == "ga")
    assert v.r == pytest.approx((48 + 25) / 2)
    assert (v.r_low, v.r_high) == pytest.approx(interval([48.0, 25.0]))
    # a pooled mean of r, not r of pooled means (they agree here: r is linear)
    assert v.r == pytest.approx(v.excess - v.forget_gap)


def test_leftover_knowledge_is_not_relearning():
    """The old rule called a method 14.9 points short of the oracle's forgetting with an
    excess of 10 "relearns": its r is -4.9, the attack added nothing beyond the gap."""
    assert classify(14.9, 10.0, (0.5, 19.5), r_ci=(-9.0, 0.0)) == "inconclusive"
    rows = []
    for seed in range(3):
        rows.append(_row("retrain", seed, 60.0, [62.0] * 5))
        rows.append(_row("leftover", seed, 74.9, [72.0 + seed] * 5))  # never forgot 14.9
    v = next(v for v in verdicts(rows) if v.method == "leftover")
    assert v.excess == pytest.approx(11.0) and v.excess_low > 0
    assert v.r < 0 and v.verdict == "inconclusive"
    assert why(v) == "r interval reaches 0: what came back may be only what was never forgotten"


def test_over_forgetting_then_ending_above_the_oracle_relearns():
    """SSD and TAR at 400 attack steps: 0% after unlearning against the oracle's 32%, 33
    points above the oracle at the attack's end. The over-forgetting guard must not hide it."""
    rows = []
    for seed, end in enumerate([64.0, 66.0, 65.0, 63.0, 67.0]):
        rows.append(_row("retrain", seed, 32.0, [32.0] * 5))
        rows.append(_row("ssd", seed, 0.0, [end] * 5))
    v = next(v for v in verdicts(rows) if v.method == "ssd")
    assert v.forget_gap == pytest.approx(-32.0) and v.excess == pytest.approx(33.0)
    assert v.verdict == "relearns" and v.seeds_relearn == 5


def test_over_forgetting_that_the_attack_undoes_is_not_over_forgets():
    """0% after unlearning against the oracle's 32%, ending 8 points above the oracle with a
    tight interval: the attack brought 40 points back, so the gap does not explain the row;
    it ends within the bar of the oracle, so it resists."""
    rows = []
    for seed, end in enumerate([39.0, 40.0, 40.5, 39.5, 41.0]):
        rows.append(_row("retrain", seed, 32.0, [32.0] * 5))
        rows.append(_row("deep", seed, 0.0, [end] * 5))
    v = next(v for v in verdicts(rows) if v.method == "deep")
    assert v.excess_low > 0 and v.r_low > 30 and v.excess_high < 10
    assert v.verdict == "resists" and why(v) == "excess interval below 10"
    # never-forgot, and the attack adds nothing beyond the gap: does-not-forget
    assert classify(20.0, 18.0, (15.0, 21.0), (-4.0, 0.5)) == "does-not-forget"
    # never-forgot, but the attack clearly added more: not hidden behind the gap
    assert classify(20.0, 8.0, (6.0, 9.0), (2.0, 4.0)) == "resists"


def test_each_verdict_and_its_thresholds():
    assert classify(16.0, 30.0, (20.0, 40.0), r_ci=(-5.0, 4.0)) == "does-not-forget"
    assert classify(-16.0, -5.0, (-9.0, -1.0), r_ci=(5.0, 14.0)) == "over-forgets"
    assert classify(0.0, 10.0, (0.5, 19.5), r_ci=(0.5, 9.5)) == "relearns"
    assert classify(0.0, 9.9, (5.0, 14.8), r_ci=(5.0, 14.0)) == "inconclusive"
    # an interval that reaches far above the bar is not "resists"
    assert classify(0.0, 9.5, (-5.0, 24.0), r_ci=(-5.0, 4.0)) == "inconclusive"
    # resists only as an equivalence: the whole interval below the bar
    assert classify(0.0, 2.0, (-2.0, 6.0), r_ci=(-2.0, 7.0)) == "resists"
    assert classify(0.0, 9.9, (9.8, 9.99), r_ci=(9.8, 18.8)) == "resists"
    # a large mean whose interval reaches 0 is not relearning
    assert classify(0.0, 12.0, (-3.0, 27.0), r_ci=(1.0, 10.0)) == "inconclusive"
    # one seed has no interval: never relearns nor resists
    nan = (math.nan, math.nan)
    assert classify(0.0, 60.0, nan, r_ci=nan) == "inconclusive"
    assert classify(0.0, 0.0, nan, r_ci=nan) == "inconclusive"
    assert classify(30.0, 30.0, nan, r_ci=nan) == "does-not-forget"


def test_the_intervals_decide_from_rows():
    """[-5, +24] is inconclusive and [-2, +6] resists, from real rows through ``verdicts``."""
    def study(name, excesses):
        rows = []
        for seed, e in enumerate(excesses):
            rows.append(_row("retrain", seed, 50.0, [60.0] * 5))
            rows.append(_row(name, seed, 50.0, [60.0 + e] * 5))
        return next(v for v in verdicts(rows) if v.method == name)

    wide = study("wide", [-3.0, 22.0, 5.0, 15.0, 8.0])
    assert wide.excess_low < 0 < 10 < wide.excess_high and wide.verdict == "inconclusive"
    narrow = study("narrow", [0.0, 4.0, 2.0, 1.0, 3.0])
    assert narrow.excess_low > -2 and narrow.excess_high < 6
    assert narrow.verdict == "resists" and narrow.seeds_relearn == 0


def test_the_interval_is_a_paired_t_interval_over_seeds():
    low, high = interval([20.0, 24.0, 22.0])
    # mean 22, sd 2, n 3: t_{0.975, 2} = 4.303 -> half-width 4.303 * 2 / sqrt(3) = 4.97
    assert (low + high) / 2 == pytest.approx(22.0)
    assert (high - low) / 2 == pytest.approx(4.303 * 2 / math.sqrt(3), rel=1e-3)
    assert all(math.isnan(v) for v in interval([5.0]))


def test_relearning_is_shown_when_two_methods_relearn_and_oracle_is_paired():
    rows = []
    for seed in range(3):
        rows.append(_row("retrain", seed, 70.0, [75.0] * 5))
        rows.append(_row("ga", seed, 72.0 + seed, [95.0 + seed] * 5))
        rows.append(_row("ng", seed, 68.0, [90.0 + 2 * seed] * 5))
        rows.append(_row("remedy", seed, 71.0, [76.0 + seed] * 5))
    found = {v.method: v for v in verdicts(rows)}
    assert found["ga"].verdict == found["ng"].verdict == "relearns"
    assert found["remedy"].verdict == "resists"  # excess 1 +- 1: the interval below 10
    assert found["ga"].n == 3 and found["ga"].excess_low > 0
    assert relearning_shown(list(found.values()))
    assert not relearning_shown([found["ga"], found["remedy"], found["retrain"]])
