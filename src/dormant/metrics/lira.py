"""The likelihood-ratio membership attack, LiRA (Carlini et al., "Membership Inference Attacks
From First Principles", IEEE S&P 2022), per example.

The statistic is the model's logit-scaled confidence in the true label,
``phi = log(p_y / (1 - p_y))``, computed as ``z_y - logsumexp_{j != y} z_j`` so that it stays
finite at confidences of 0 and 1. Shadow models train on random halves of a pool, so each
example is *in* for about half of them. Per example, Gaussians are fitted to its ``phi`` under
the shadows that trained on it (in) and those that did not (out):

- **online**: score = log N(phi; mu_in, sigma_in) - log N(phi; mu_out, sigma_out);
- **offline** (out shadows only): the one-sided test of the paper, score =
  log P[Z <= phi] for Z ~ N(mu_out, sigma_out): how far above what the model would give an
  example it never saw.

With several queries (augmented copies of the example) the scores are averaged. With fewer
than 64 shadows the paper advises one global variance; it is pooled here from every example's
deviations from its own mean (in and out apart), so that the spread *between* examples does
not inflate it. Higher scores mean "member"."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

PER_EXAMPLE_VARIANCE_FROM = 64
"""Shadow count from which each example gets its own variances (Carlini et al., sec. VI)."""
_FLOOR = 1e-6  # a variance floor: an example with identical phi under every shadow


def scaled_logit(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``log(p_y) - log(1 - p_y)`` from logits, in float64, finite at p_y of 0 and 1."""
    z = logits.double()
    zy = z.gather(-1, y.unsqueeze(-1)).squeeze(-1)
    others = z.scatter(-1, y.unsqueeze(-1), float("-inf"))
    return zy - torch.logsumexp(others, dim=-1)


@dataclass(frozen=True)
class Fit:
    """Per-example Gaussian fits: ``mean_in``, ``mean_out``, ``std_in``, ``std_out`` (arrays
    over examples and queries) and whether one global variance was used."""

    mean_in: np.ndarray
    mean_out: np.ndarray
    std_in: np.ndarray
    std_out: np.ndarray
    global_variance: bool
    shadows: int


def _moments(phi: np.ndarray, mask: np.ndarray, global_variance: bool
             ) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std over the models (axis 0) where ``mask``; pooled std when global."""
    m = mask.astype(float)
    while m.ndim < phi.ndim:
        m = m[..., None]
    count = m.sum(0)
    mean = (phi * m).sum(0) / np.maximum(count, 1)
    dev2 = ((phi - mean) ** 2) * m
    if global_variance:  # every (example, query) cell gives count - 1 degrees of freedom
        dof = (np.broadcast_to(count, mean.shape) - 1).clip(0).sum()
        var = np.full_like(mean, dev2.sum() / max(float(dof), 1.0))
    else:
        var = dev2.sum(0) / np.maximum(count - 1, 1)
    return mean, np.sqrt(np.maximum(var, _FLOOR))


def fit_gaussians(shadow_phi: np.ndarray, shadow_in: np.ndarray,
                  global_variance: bool | None = None) -> Fit:
    """Fit ``shadow_phi`` (models x examples [x queries]) given ``shadow_in`` (models x
    examples, True where the model trained on the example). ``global_variance`` None: global
    below :data:`PER_EXAMPLE_VARIANCE_FROM` shadows."""
    shadow_in = np.asarray(shadow_in, bool)
    n = len(shadow_phi)
    g = n < PER_EXAMPLE_VARIANCE_FROM if global_variance is None else global_variance
    mi, si = _moments(shadow_phi, shadow_in, g)
    mo, so = _moments(shadow_phi, ~shadow_in, g)
    return Fit(mi, mo, si, so, g, n)


def _logpdf(x, mean, std):
    return -0.5 * ((x - mean) / std) ** 2 - np.log(std) - 0.5 * np.log(2 * np.pi)


def lira_scores(target_phi: np.ndarray, fit: Fit, online: bool = True) -> np.ndarray:
    """Per-example membership scores of a target model's ``phi`` (examples [x queries]);
    higher is more member-like."""
    from scipy.stats import norm

    if online:
        s = _logpdf(target_phi, fit.mean_in, fit.std_in) - \
            _logpdf(target_phi, fit.mean_out, fit.std_out)
    else:
        s = norm.logcdf((target_phi - fit.mean_out) / fit.std_out)
    return s.reshape(len(s), -1).mean(1)


def roc_summary(member_scores: np.ndarray, nonmember_scores: np.ndarray) -> dict[str, float]:
    """AUC and the TPR at 1% and 0.1% FPR (the highest TPR whose FPR does not exceed the
    level; 0.1% of fewer than 1,000 non-members is no false positive at all)."""
    from sklearn.metrics import roc_auc_score, roc_curve

    labels = np.r_[np.ones(len(member_scores)), np.zeros(len(nonmember_scores))]
    scores = np.r_[member_scores, nonmember_scores]
    fpr, tpr, _ = roc_curve(labels, scores)

    def at(level: float) -> float:
        ok = fpr <= level
        return float(tpr[ok].max()) if ok.any() else 0.0

    return {"auc": float(roc_auc_score(labels, scores)), "tpr_at_1pct": at(0.01),
            "tpr_at_0.1pct": at(0.001), "members": len(member_scores),
            "nonmembers": len(nonmember_scores)}


def membership(n_models: int, pool: int, seed: int) -> np.ndarray:
    """``(n_models, pool)`` booleans: which pool examples each shadow trains on. Each example
    is in for exactly half the models (Carlini et al.'s assignment: a random order of the
    models per example, the first half in), and each model gets about half the pool."""
    rng = np.random.default_rng(seed)
    order = rng.random((n_models, pool)).argsort(0)
    return order < n_models // 2
