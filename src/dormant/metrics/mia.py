"""Membership inference against a forget set: a loss threshold and SalUn's SVC attack,
both reported as ROC AUC of the target examples against unseen examples.

An AUC of 0.5 means the attack cannot tell the target from data the model never saw, which
is what retraining without the target gives; above 0.5 the target still looks like training
data. Features come from the model in eval mode with no augmentation.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dormant.engine import predict

_EPS = 1e-30  # SalUn's floor inside the logarithms


def _logits(model: nn.Module, x: torch.Tensor, y: torch.Tensor, ids: torch.Tensor):
    ids = torch.as_tensor(ids, device=x.device)
    return predict(model, x, ids).double(), y[ids.to(y.device)].to(x.device)


def example_losses(model: nn.Module, x: torch.Tensor, y: torch.Tensor, ids: torch.Tensor
                   ) -> np.ndarray:
    """Per-example cross-entropy of ``x[ids]`` (eval mode)."""
    logits, target = _logits(model, x, y, ids)
    return F.cross_entropy(logits, target.to(logits.device), reduction="none").cpu().numpy()


def softmax_features(model: nn.Module, x: torch.Tensor, y: torch.Tensor, ids: torch.Tensor
                     ) -> np.ndarray:
    """``(n, 3)`` features per example: confidence ``p_y``, entropy ``-sum_i p_i log p_i`` and
    modified entropy (Song & Mittal 2021, USENIX Security)
    ``-(1 - p_y) log p_y - sum_{i != y} p_i log(1 - p_i)``, which, unlike entropy, uses the
    label: it is small only when the model is confidently right."""
    logits, target = _logits(model, x, y, ids)
    p = logits.softmax(1)
    target = target.to(p.device)
    py = p.gather(1, target[:, None]).squeeze(1)
    log_p = p.clamp_min(_EPS).log()
    entropy = -(p * log_p).sum(1)
    log_q = (1 - p).clamp_min(_EPS).log()
    others = (p * log_q).sum(1) - py * log_q.gather(1, target[:, None]).squeeze(1)
    mentr = -(1 - py) * py.clamp_min(_EPS).log() - others
    return torch.stack([py, entropy, mentr], 1).cpu().numpy()


def _sample(ids: torch.Tensor, n: int, rng: np.random.Generator) -> torch.Tensor:
    ids = torch.as_tensor(ids)
    return ids[torch.as_tensor(rng.permutation(len(ids))[:n], device=ids.device)]


def _auc(pos: np.ndarray, neg: np.ndarray) -> float:
    labels = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    from sklearn.metrics import roc_auc_score  # sklearn costs 2 s of import: only when used

    return float(roc_auc_score(labels, np.r_[pos, neg]))


def loss_auc(model: nn.Module, x: torch.Tensor, y: torch.Tensor, target_ids: torch.Tensor,
             x_out: torch.Tensor, y_out: torch.Tensor, out_ids: torch.Tensor) -> float:
    """Loss-threshold membership inference (Yeom et al. 2018): score = -CE per example;
    ROC AUC of the target examples (positives) against the out examples (negatives)."""
    if len(target_ids) == 0 or len(out_ids) == 0:
        return float("nan")
    return _auc(-example_losses(model, x, y, target_ids),
                -example_losses(model, x_out, y_out, out_ids))


def svc_mia_auc(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    shadow_in_ids: torch.Tensor,
    x_out: torch.Tensor,
    y_out: torch.Tensor,
    shadow_out_ids: torch.Tensor,
    target_ids: torch.Tensor,
    eval_out_ids: torch.Tensor,
    seed: int = 0,
    max_shadow: int = 1000,
) -> float:
    """SalUn's SVC-MIA (Jia et al. 2023) as an AUC instead of a hard member/non-member rate.

    An ``SVC(C=3, gamma="auto", kernel="rbf")`` learns members (label 1: ``x[shadow_in_ids]``,
    retain examples) against non-members (label 0: ``x_out[shadow_out_ids]``, test examples)
    from :func:`softmax_features`; the two shadow sets are balanced and capped at
    ``max_shadow`` each by a numpy generator seeded with ``seed``. Its decision function then
    scores ``x[target_ids]`` against ``x_out[eval_out_ids]``, which must be disjoint from the
    shadow-out ids (the caller splits the test set in two halves). SalUn trains one SVC per
    feature and reports confidence; here the three features go into one SVC, standardised on
    the shadow set so that the unbounded modified entropy does not swamp the RBF kernel.
    """
    rng = np.random.default_rng(seed)
    n = min(len(shadow_in_ids), len(shadow_out_ids), max_shadow)
    if n == 0 or len(target_ids) == 0 or len(eval_out_ids) == 0:
        return float("nan")
    sin, sout = (_sample(ids, n, rng) for ids in (shadow_in_ids, shadow_out_ids))
    feats = np.concatenate([softmax_features(model, x, y, sin),
                            softmax_features(model, x_out, y_out, sout)])
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    scaler = StandardScaler().fit(feats)
    clf = SVC(C=3, gamma="auto", kernel="rbf")
    clf.fit(scaler.transform(feats), np.r_[np.ones(n), np.zeros(n)])

    def score(xs, ys, ids):
        return clf.decision_function(scaler.transform(softmax_features(model, xs, ys, ids)))

    return _auc(score(x, y, target_ids), score(x_out, y_out, eval_out_ids))
