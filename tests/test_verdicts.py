"""The verdict rules: the end statistic, excess against the same cell's oracle, the paired
interval, and the four verdicts; over-forgetting is never scored as relearning."""

from __future__ import annotations

import math

import pytest

from dormant.experiments.verdicts import (
    classify,
    interval,
    relearning_shown,
    verdicts,
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


def test_each_verdict_and_its_thresholds():
    assert classify(forget_gap=16.0, excess=30.0, excess_low=20.0, n=3) == "does-not-forget"
    assert classify(forget_gap=-16.0, excess=30.0, excess_low=20.0, n=3) == "over-forgets"
    assert classify(forget_gap=14.9, excess=10.0, excess_low=0.5, n=3) == "relearns"
    assert classify(forget_gap=0.0, excess=9.9, excess_low=5.0, n=3) == "resists"
    # a large mean whose interval reaches 0 is not yet relearning over several seeds
    assert classify(forget_gap=0.0, excess=12.0, excess_low=-3.0, n=3) == "resists"
    # one seed has no interval: the mean decides
    assert classify(forget_gap=0.0, excess=12.0, excess_low=math.nan, n=1) == "relearns"


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
    assert found["remedy"].verdict == "resists"
    assert found["ga"].n == 3 and found["ga"].excess_low > 0
    assert relearning_shown(list(found.values()))
    assert not relearning_shown([found["ga"], found["remedy"], found["retrain"]])
