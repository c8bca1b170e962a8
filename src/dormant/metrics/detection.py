"""Detection quality: how well a score separates suspect inputs from clean ones."""

from __future__ import annotations

import torch


def auroc(negatives: torch.Tensor, positives: torch.Tensor) -> float:
    """Area under the ROC curve for "``positives`` score higher than ``negatives``", in
    [0, 1]; ties count one half (the Mann-Whitney form, which is what sklearn computes)."""
    if len(negatives) == 0 or len(positives) == 0:
        raise ValueError("AUROC needs at least one negative and one positive score")
    neg = negatives.detach().double().flatten().cpu()
    pos = positives.detach().double().flatten().cpu()
    greater = (pos[:, None] > neg[None, :]).double().sum()
    ties = (pos[:, None] == neg[None, :]).double().sum()
    return float((greater + 0.5 * ties) / (len(pos) * len(neg)))
