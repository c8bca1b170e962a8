"""RMIA (Zarifzadeh, Liu and Shokri, "Low-Cost High-Power Membership Inference Attacks", ICML
2024): a membership test that needs as little as one reference model.

The likelihood ratio of an example ``x`` against a population example ``z`` is
``LR(x, z) = [p(x|target) / p(x)] / [p(z|target) / p(z)]``, with ``p`` the model's softmax
probability of the true label, and the score of ``x`` is the fraction of population examples
``z`` with ``LR(x, z) > gamma``. ``p(x)``, the probability over models that did not all train
on ``x``, comes from OUT reference models by the offline approximation
``p(x) = ((1 + a) p_OUT(x) + (1 - a)) / 2`` (privacytrustlab/ml_privacy_meter,
``modules/mia/attacks/rmia.py``).

Defaults, from the authors' CIFAR-10 configurations (``research/2024_rmia/attack_configs``):
``a = 0.3`` (their one-reference-model setting included) and ``gamma = 2`` (the paper's
configurations; the library's current code compares against 1). The paper's code scores a
Taylor-softmax with a soft margin and 18 augmented queries; a plain softmax and the study's
queries are used here, so the attack is, if anything, weaker than theirs."""

from __future__ import annotations

import numpy as np

OFFLINE_A = 0.3
"""The offline approximation's ``a`` for CIFAR-10 in the authors' configurations."""
GAMMA = 2.0
"""The likelihood-ratio threshold of the paper's configurations."""


def rmia_scores(target_x: np.ndarray, ref_x: np.ndarray, target_z: np.ndarray,
                ref_z: np.ndarray, a: float = OFFLINE_A, gamma: float = GAMMA) -> np.ndarray:
    """Per-example RMIA scores in [0, 1] (higher: more member-like). ``target_x``/``ref_x``:
    the target's and the OUT reference models' mean probability of the true label on the
    audited examples; ``target_z``/``ref_z`` the same on population examples."""
    px = 0.5 * ((1 + a) * np.asarray(ref_x, float) + (1 - a))
    pz = 0.5 * ((1 + a) * np.asarray(ref_z, float) + (1 - a))
    ratio_x = np.asarray(target_x, float) / px
    ratio_z = np.asarray(target_z, float) / pz
    # LR(x, z) > gamma  <=>  ratio_z < ratio_x / gamma: one sort instead of an x-by-z matrix
    ordered = np.sort(ratio_z)
    return np.searchsorted(ordered, ratio_x / gamma, side="left") / len(ordered)
