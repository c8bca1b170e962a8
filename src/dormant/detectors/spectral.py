"""Spectral signatures (Tran, Li and Madry, NeurIPS 2018): per class, the penultimate-layer
features of the images labelled it, centred; their top right singular vector; each image's
score is its squared projection on it. Poisons relabelled to a class form a sub-population
that this direction separates, so the largest scores are removed: ``multiplier`` x
``epsilon`` x the class's count of them (the paper removes 1.5 epsilon n, epsilon an upper
bound on the poisoned share; BackdoorBench's spectral defense keeps 1.5 and 5%)."""

from __future__ import annotations

import math

import torch
from pydantic import Field
from torch import nn

from dormant.detectors.registry import Detection, register_detector
from dormant.engine import to_float
from dormant.models.features import INPUT, capture
from dormant.settings import Settings, one_line


@one_line("spectral signatures")
class SpectralConfig(Settings):
    """Tran et al. 2018's rule: flag the ``multiplier`` x ``epsilon`` share of each class with
    the largest scores (their 1.5 and an epsilon of 5%)."""

    epsilon: float = Field(0.05, gt=0, lt=1)
    multiplier: float = Field(1.5, gt=0)
    batch_size: int = Field(512, ge=1)


def penultimate(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """(n, d) inputs of the model's last linear layer, the representation the paper uses."""
    last = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
    device = next(model.parameters()).device
    out = []
    was = model.training
    model.eval()
    with torch.no_grad(), capture(model, [last + INPUT]) as feats:
        for s in range(0, len(x), batch_size):
            model(to_float(x[s : s + batch_size]).to(device))
            out.append(feats[last + INPUT].flatten(1).float().cpu())
    model.train(was)
    return torch.cat(out) if out else torch.zeros(0, 0)


@register_detector("spectral", SpectralConfig, label="spectral signatures",
                   rule="the top 1.5 x 5% of each class by squared projection on its top "
                        "singular direction (Tran et al. 2018)")
def spectral(cfg: SpectralConfig, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
             reference: torch.Tensor, seed: int) -> Detection:
    feats = penultimate(model, x, cfg.batch_size)
    scores = torch.zeros(len(y))
    flags = torch.zeros(len(y), dtype=torch.bool)
    y = y.cpu()
    for c in torch.unique(y).tolist():
        ids = torch.nonzero(y == c).flatten()
        if len(ids) < 2:
            continue
        r = feats[ids] - feats[ids].mean(0)
        v = torch.linalg.svd(r, full_matrices=False).Vh[0]
        s = (r @ v) ** 2
        scores[ids] = s
        k = math.floor(cfg.multiplier * cfg.epsilon * len(ids))
        if k:
            flags[ids[torch.topk(s, k).indices]] = True
    return Detection(scores, flags)
