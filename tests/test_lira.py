"""LiRA's defining properties in numbers (issue 25), on synthetic data where the truth is known:
the logit scaling is finite at confidences of 0 and 1, the Gaussian fits recover the means
and variances they were drawn with, identical in and out distributions give an AUC of 0.5,
and a planted membership signal is found."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dormant.metrics.lira import fit_gaussians, lira_scores, membership, roc_summary, scaled_logit


def test_the_logit_scaling_is_exact_and_finite_at_confidences_of_0_and_1():
    logits = torch.tensor([[2.0, 0.5, -1.0], [800.0, 0.0, 0.0], [-800.0, 0.0, 0.0]])
    phi = scaled_logit(logits, torch.tensor([0, 0, 0]))
    p = torch.softmax(logits[0].double(), 0)[0]
    assert phi[0].item() == pytest.approx(float(torch.log(p / (1 - p))), abs=1e-12)
    # p_y = 1 and 0 in float64: log(p / (1 - p)) would be inf and -inf
    assert torch.isfinite(phi).all()
    assert phi[1].item() == pytest.approx(800 - np.log(2), abs=1e-9)
    assert phi[2].item() == pytest.approx(-800 - np.log(2), abs=1e-9)


def _synthetic(models: int, examples: int, shift: float, seed: int):
    rng = np.random.default_rng(seed)
    mean = rng.normal(0, 3, examples)  # examples differ: the per-example fits must see that
    keep = membership(models, examples, seed)
    phi = mean + rng.normal(0, 0.5, (models, examples)) + shift * keep
    return mean, keep, phi, rng


def test_each_example_is_in_for_exactly_half_the_shadows():
    keep = membership(16, 1000, 0)
    assert (keep.sum(0) == 8).all()
    assert abs(keep.sum(1).mean() - 500) < 1 and keep.sum(1).std() < 40


@pytest.mark.parametrize("models,global_variance", [(256, False), (16, True)])
def test_the_gaussian_fits_recover_known_means_and_variances(models, global_variance):
    mean, keep, phi, _ = _synthetic(models, 500, shift=2.0, seed=0)
    fit = fit_gaussians(phi, keep)
    assert fit.global_variance is global_variance  # the rule: global below 64 shadows
    half = models // 2
    # each mean from `half` draws of sd 0.5: within 5 standard errors
    assert np.abs(fit.mean_out - mean).max() < 5 * 0.5 / np.sqrt(half)
    assert np.abs(fit.mean_in - (mean + 2.0)).max() < 5 * 0.5 / np.sqrt(half)
    # the spread between examples (sd 3) must not leak into the variance (sd 0.5)
    assert np.median(fit.std_in) == pytest.approx(0.5, rel=0.05)
    assert np.median(fit.std_out) == pytest.approx(0.5, rel=0.05)


@pytest.mark.parametrize("online", [True, False])
def test_identical_in_and_out_distributions_give_an_auc_of_one_half(online):
    """No signal: 2,000 targets, half members. The AUC's standard error is about 0.013; the
    tolerance is 4 of them."""
    mean, keep, phi, rng = _synthetic(16, 2000, shift=0.0, seed=1)
    target_in = rng.random(2000) < 0.5
    target_phi = mean + rng.normal(0, 0.5, 2000)
    s = lira_scores(target_phi, fit_gaussians(phi, keep), online=online)
    assert roc_summary(s[target_in], s[~target_in])["auc"] == pytest.approx(0.5, abs=0.052)


@pytest.mark.parametrize("online", [True, False])
def test_a_planted_membership_signal_is_found(online):
    """The positive control: members sit 2 sd higher, as in the shadows. The best possible
    AUC is Phi(2 / sqrt(2)) = 0.92 for one draw; the per-example fits must get near it."""
    mean, keep, phi, rng = _synthetic(16, 2000, shift=1.0, seed=2)
    target_in = rng.random(2000) < 0.5
    target_phi = mean + rng.normal(0, 0.5, 2000) + 1.0 * target_in
    r = roc_summary(*(lambda s: (s[target_in], s[~target_in]))(
        lira_scores(target_phi, fit_gaussians(phi, keep), online=online)))
    assert r["auc"] > 0.88 and r["tpr_at_1pct"] > 0.2


def test_the_global_variance_is_the_same_with_several_queries():
    """Queries (augmented copies) add cells, not spread: five copies of the same shadows'
    statistic, each with its own noise, pool to the same variance as one."""
    mean, keep, phi, rng = _synthetic(16, 500, shift=2.0, seed=3)
    queried = phi[..., None] + rng.normal(0, 1e-3, (*phi.shape, 5))
    one, five = fit_gaussians(phi, keep), fit_gaussians(queried, keep)
    assert five.global_variance and five.std_in.shape == (500, 5)
    assert float(five.std_in.mean()) == pytest.approx(float(one.std_in.mean()), rel=0.01)
    assert float(five.std_out.mean()) == pytest.approx(0.5, rel=0.05)
