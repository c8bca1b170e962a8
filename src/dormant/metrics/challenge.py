"""The NeurIPS 2023 machine-unlearning challenge's score (google-deepmind/unlearning_evaluation,
``metric.py`` and ``main.py``): how well can the outputs of models that *unlearned* an example
be told from those of models *retrained* without it, as a per-example epsilon, bucketed into
points and adjusted by utility.

Per forget example, the statistic is each model's logit-scaled confidence (LiRA's). Every
threshold on it, and every interval, is an attack with a false-positive and a false-negative
rate over the models; its epsilon is
``max(log(1 - delta - FPR) - log FNR, log(1 - delta - FNR) - log FPR)``, at least 0, infinite
when both rates are 0 and undefined (skipped) when only one is. The example's epsilon is the
largest over the attacks, capped at 50, and 50 outright when one set of outputs is 100 times
peakier (in range) than the other. Points: ``2**-k`` for epsilon in ``[k/2, (k+1)/2)``, none
from ``ceil(ln(N - 1))`` on, with N models per side. Forgetting quality is the mean of the
points over the forget set; the score multiplies it by the unlearned over the retrained
models' mean retain accuracy and the same for test accuracy.

The challenge sweeps a grid of 100 thresholds per unit and intervals of a constrained width;
here every threshold and every interval between observed values is tried, which reaches
every error pair the grid can and more, so an epsilon here is never below the grid's on the
same outputs. The challenge used 512 models per side; with N models the finest epsilon a
rate of 1/N allows is about ln(N - 1), which is why the point scale stops there, and the
model count is reported with every score. The best of so many attacks finds some epsilon
even between identical distributions: outputs drawn from one Gaussian for both sides scored
a forgetting quality of 0.12, 0.07 and 0.05 with 16, 64 and 256 models per side (30
examples each, measured here), so a method as good as retraining scores well below 1, and
scores compare only at one model count."""

from __future__ import annotations

import math

import numpy as np

DELTA = 1e-5
EPSILON_CAP = 50.0
PEAKY = 0.01


def _epsilon(fpr: np.ndarray, fnr: np.ndarray) -> float:
    with np.errstate(divide="ignore", invalid="ignore"):
        eps = np.maximum(np.log(1 - DELTA - fpr) - np.log(fnr),
                         np.log(1 - DELTA - fnr) - np.log(fpr))
    eps = np.where((fpr == 0) & (fnr == 0), np.inf, eps)
    eps = np.where((fpr == 0) ^ (fnr == 0), np.nan, eps)
    if np.all(np.isnan(eps)):
        return 0.0
    return float(min(max(np.nanmax(eps), 0.0), EPSILON_CAP))


def example_epsilon(unlearned: np.ndarray, retrained: np.ndarray) -> float:
    """Epsilon of one example from its statistic under each unlearned and retrained model."""
    u, r = np.asarray(unlearned, float), np.asarray(retrained, float)
    ranges = sorted([np.ptp(u), np.ptp(r)])
    if ranges[1] > 0 and ranges[0] / ranges[1] < PEAKY:
        return EPSILON_CAP
    cuts = np.unique(np.r_[u, r])
    cuts = np.r_[cuts - 1e-12, cuts[-1] + 1.0]  # just below each value, and above them all
    fprs, fnrs = [], []
    for pos, neg in ((u, r), (r, u)):  # either side may be called "unlearned"
        # a threshold: positive at or above it
        tpr = (pos[None, :] >= cuts[:, None]).mean(1)
        fpr = (neg[None, :] >= cuts[:, None]).mean(1)
        fprs.append(fpr)
        fnrs.append(1 - tpr)
        # an interval [lo, hi): positive inside it
        lo, hi = cuts[:, None, None], cuts[None, :, None]
        inside_p = ((pos >= lo) & (pos < hi)).mean(-1)
        inside_n = ((neg >= lo) & (neg < hi)).mean(-1)
        ok = np.triu(np.ones((len(cuts), len(cuts)), bool), 1)
        fprs.append(inside_n[ok])
        fnrs.append(1 - inside_p[ok])
    return _epsilon(np.concatenate(fprs), np.concatenate(fnrs))


def points(epsilon: float, models: int) -> float:
    """The challenge's points for one example's epsilon with ``models`` models per side."""
    if models < 3:  # ln(N - 1) <= 0: no epsilon is small enough to earn a point
        return 0.0
    top = math.ceil(math.log(models - 1))
    if epsilon >= top:
        return 0.0
    return 2.0 ** -int(epsilon // 0.5)


def forgetting_quality(unlearned: list[np.ndarray], retrained: list[np.ndarray]) -> dict:
    """Per example (one array of model outputs per side each), its epsilon and points, and
    their mean: the forgetting quality F, with the smallest model count behind it."""
    eps = [example_epsilon(u, r) for u, r in zip(unlearned, retrained, strict=True)]
    n = min(min(len(u), len(r)) for u, r in zip(unlearned, retrained, strict=True))
    pts = [points(e, n) for e in eps]
    return {"quality": float(np.mean(pts)), "epsilons": eps, "models": n}


def challenge_score(quality: float, retain_u: float, retain_r: float, test_u: float,
                    test_r: float) -> float:
    """F times the utility ratios (mean accuracies over each side's models), uncapped as in
    the challenge's code."""
    return quality * (retain_u / retain_r) * (test_u / test_r)
