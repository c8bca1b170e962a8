"""RMIA's and the NeurIPS 2023 challenge score's defining properties in numbers (issue 25), on
values worked out by hand and synthetic data where the truth is known."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dormant.metrics.challenge import (
    _epsilon,
    challenge_score,
    example_epsilon,
    forgetting_quality,
    points,
)
from dormant.metrics.lira import roc_summary
from dormant.metrics.rmia import rmia_scores


def test_rmia_counts_the_population_examples_the_ratio_beats_by_gamma():
    # a = 1: p(x) is the reference's own probability, so the ratios are target / reference
    target_z, ref_z = np.array([1.0, 2.0, 3.0, 4.0]) * 0.1, np.full(4, 0.1)
    s = rmia_scores(np.array([0.5]), np.array([0.1]), target_z, ref_z, a=1.0, gamma=2.0)
    # LR(x, z) = 5 / ratio_z > 2 for ratio_z of 1 and 2 only
    assert s[0] == pytest.approx(0.5)
    # the offline approximation, p(x) = ((1 + a) p_out + (1 - a)) / 2: with a = 0.3,
    # p(x) = 0.48 for p_out 0.2 and p(z) = 0.935 for p_out 0.9, so
    # LR = (0.5 / 0.48) / (0.5 / 0.935) = 1.948: over gamma 1.9, under 2
    x, ref_x, z, ref_z = np.array([0.5]), np.array([0.2]), np.array([0.5]), np.array([0.9])
    assert rmia_scores(x, ref_x, z, ref_z, a=0.3, gamma=1.9)[0] == 1.0
    assert rmia_scores(x, ref_x, z, ref_z, a=0.3, gamma=2.0)[0] == 0.0
    # a = 1 would read p(x) = p_out: LR = (0.5 / 0.2) / (0.5 / 0.9) = 4.5, over 2
    assert rmia_scores(x, ref_x, z, ref_z, a=1.0, gamma=2.0)[0] == 1.0


def test_rmia_is_blind_where_members_look_like_non_members_and_finds_a_planted_signal():
    rng = np.random.default_rng(0)
    ref = rng.uniform(0.2, 0.9, 4000)
    same = np.clip(ref + rng.normal(0, 0.05, 4000), 1e-3, 1)
    pop_ref = rng.uniform(0.2, 0.9, 1000)
    pop = np.clip(pop_ref + rng.normal(0, 0.05, 1000), 1e-3, 1)
    s = rmia_scores(same, ref, pop, pop_ref)
    assert roc_summary(s[:2000], s[2000:])["auc"] == pytest.approx(0.5, abs=0.03)
    boosted = same.copy()
    boosted[:2000] = np.clip(boosted[:2000] + 0.1, 0, 1)
    s = rmia_scores(boosted, ref, pop, pop_ref)
    assert roc_summary(s[:2000], s[2000:])["auc"] > 0.7


def test_the_challenge_epsilon_follows_its_formula_and_its_edge_cases():
    # FPR 0.25, FNR 0.5: max(log(0.75 - d) - log 0.5, log(0.5 - d) - log 0.25) = log 2
    assert _epsilon(np.array([0.25]), np.array([0.5])) == pytest.approx(math.log(2), abs=1e-4)
    # one rate 0 alone is skipped; both 0 (perfect separation) is the cap
    assert _epsilon(np.array([0.0, 0.25]), np.array([0.5, 0.5])) == pytest.approx(
        math.log(2), abs=1e-4)
    assert _epsilon(np.array([0.0]), np.array([0.0])) == 50.0
    assert example_epsilon(np.arange(8.0), np.arange(8.0) + 100) == 50.0
    # a set 100 times peakier than the other is the cap outright
    assert example_epsilon(np.full(8, 1.0) + np.arange(8) * 1e-4, np.arange(8.0)) == 50.0


def test_the_challenge_points_halve_every_half_epsilon_and_stop_at_ln_n():
    assert [points(e, 512) for e in (0.2, 0.7, 1.2, 6.9, 7.0)] == [1, 0.5, 0.25, 2 ** -13, 0]
    assert (points(2.9, 16), points(3.0, 16)) == (2 ** -5, 0)  # ceil(ln 15) = 3
    assert points(0.0, 2) == 0  # ln 1 = 0: two models per side earn nothing
    assert challenge_score(0.5, 90.0, 100.0, 80.0, 100.0) == pytest.approx(0.36)


def test_identical_unlearned_and_retrained_outputs_score_high_and_separated_ones_zero():
    rng = np.random.default_rng(1)
    same = forgetting_quality([rng.normal(0, 1, 64) for _ in range(50)],
                              [rng.normal(0, 1, 64) for _ in range(50)])
    apart = forgetting_quality([rng.normal(0, 1, 64) for _ in range(50)],
                               [rng.normal(6, 1, 64) for _ in range(50)])
    assert same["models"] == 64
    # the best of every threshold and interval finds some epsilon even between identical
    # distributions (about 2 here: an interval that happens to hold 5 of one side's draws
    # and 1 of the other's), so identical sets score well short of 1; what they never get
    # is the 0 of two sets told apart
    assert same["quality"] > 0.03
    assert apart["quality"] == 0.0
