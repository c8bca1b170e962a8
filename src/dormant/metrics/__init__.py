"""Metrics: accuracies, ToW, recovery, weight distance, recovery curves, linear mode
connectivity and membership inference. Accuracies are percentages 0..100."""

from __future__ import annotations

import torch
from torch import nn

from dormant.metrics.curves import aurc, end_mean
from dormant.metrics.detection import auroc
from dormant.metrics.lmc import interpolate_state, lmc_curve, loss_barrier
from dormant.metrics.mia import example_losses, loss_auc, softmax_features, svc_mia_auc


def tow(retain_acc: float, forget_acc: float, test_acc: float) -> float:
    """Tug-of-war = retain x (1 - forget) x test, on fractions; returned as a percentage."""
    return retain_acc / 100 * (1 - forget_acc / 100) * test_acc / 100 * 100


def recovery(forget_acc_unlearned: float, forget_acc_attacked_best: float) -> float:
    """Points of held-out forget accuracy the attack brings back (its best point), measured
    from the method's *own* start. Not a verdict: a method that over-forgets (ends far below
    the oracle) shows a large recovery without relearning anything the oracle would not;
    verdicts use ``excess`` against the oracle (``dormant.experiments.verdicts``)."""
    return forget_acc_attacked_best - forget_acc_unlearned


def comparable(a: nn.Module, b: nn.Module) -> bool:
    """Whether two models share their parameters' names and shapes, so that weight distances
    and interpolations between them mean something (a SISA ensemble and one model do not)."""
    shapes = lambda m: [(n, p.shape) for n, p in m.named_parameters()]  # noqa: E731
    return shapes(a) == shapes(b)


def l2_distance(a: nn.Module, b: nn.Module) -> float:
    """L2 norm of the difference of trainable parameters (no BatchNorm running stats)."""
    total = torch.zeros((), dtype=torch.float64)
    for (na, pa), (nb, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        if na != nb:
            raise ValueError(f"parameter mismatch: {na} vs {nb}")
        total += (pa.detach().double().cpu() - pb.detach().double().cpu()).pow(2).sum()
    return float(total.sqrt())


__all__ = [
    "aurc", "auroc", "comparable", "end_mean", "example_losses", "interpolate_state", "l2_distance",
    "lmc_curve", "loss_auc", "loss_barrier", "recovery", "softmax_features", "svc_mia_auc", "tow",
]
