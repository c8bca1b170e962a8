"""Linear mode connectivity: evaluate the straight line between two models' weights."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from dormant.engine import evaluate

EvalSet = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]


def interpolate_state(
    a_sd: Mapping[str, torch.Tensor], b_sd: Mapping[str, torch.Tensor], t: float
) -> dict[str, torch.Tensor]:
    """``(1 - t)·A + t·B`` on every state-dict entry, BatchNorm running statistics included
    and not re-estimated (as in the seed code); integer buffers (``num_batches_tracked``)
    are taken from B. The formula is exact at both ends: t = 0 gives A, t = 1 gives B."""
    if set(a_sd) != set(b_sd):
        missing = sorted(set(a_sd) ^ set(b_sd))
        raise ValueError(f"state dicts differ in entries: {missing[:5]}")
    out = {}
    for name, a in a_sd.items():
        b = b_sd[name].to(a.device)
        if a.shape != b.shape:
            raise ValueError(f"shape mismatch at {name}: {tuple(a.shape)} vs {tuple(b.shape)}")
        if a.is_floating_point():
            out[name] = (1 - t) * a.detach() + t * b.detach().to(a.dtype)
        else:
            out[name] = b.detach().clone()
    return out


def lmc_curve(a: nn.Module, b: nn.Module, sets: Mapping[str, EvalSet], points: int = 21
              ) -> dict[str, list[float]]:
    """Loss and accuracy along ``theta(t) = (1 - t)·a + t·b`` at ``points`` evenly spaced t.

    ``sets`` maps a name (``"retain"``, ``"forget"``, ``"test"``) to ``(x_uint8, y, ids)``.
    Returns ``{"t": [...], "<name>_loss": [...], "<name>_acc": [...]}``; accuracies in %.
    ``a`` and ``b`` are left untouched: a scratch copy of ``a`` carries the mixed weights.
    """
    if points < 2:
        raise ValueError(f"points must be at least 2, got {points}")
    a_sd = {k: v.detach().clone() for k, v in a.state_dict().items()}
    b_sd = {k: v.detach().clone() for k, v in b.state_dict().items()}
    scratch = copy.deepcopy(a)
    ts = [i / (points - 1) for i in range(points)]
    out: dict[str, list[float]] = {"t": ts}
    for name in sets:
        out[f"{name}_loss"], out[f"{name}_acc"] = [], []
    for t in ts:
        scratch.load_state_dict(interpolate_state(a_sd, b_sd, t))
        for name, (x, y, ids) in sets.items():
            e = evaluate(scratch, x, y, ids)
            out[f"{name}_loss"].append(e.loss)
            out[f"{name}_acc"].append(e.acc)
    return out


def loss_barrier(t: Sequence[float], losses: Sequence[float]) -> float:
    """Largest excess of the loss over the chord between the two ends:
    ``max_i (L_i - ((1 - t_i)·L_0 + t_i·L_end))``; 0 for a convex or straight path."""
    if len(t) != len(losses) or len(t) == 0:
        raise ValueError("t and losses must be non-empty and of equal length")
    first, last = losses[0], losses[-1]
    return float(max(li - ((1 - ti) * first + ti * last) for ti, li in zip(t, losses,
                                                                            strict=True)))
