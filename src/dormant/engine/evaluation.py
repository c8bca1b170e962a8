"""Cheap evaluation: large batches, ``inference_mode``, the model's own mode restored after."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dormant.engine.device import autocast, to_float


@dataclass(frozen=True)
class Eval:
    acc: float  # percent, 0..100
    loss: float
    n: int


def predict(
    model: nn.Module, x: torch.Tensor, ids: torch.Tensor | None = None, batch_size: int = 1024
) -> torch.Tensor:
    """Logits (float32) for ``x[ids]`` in eval mode."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    ids = torch.arange(len(x), device=x.device) if ids is None else ids.to(x.device)
    out = []
    with torch.inference_mode(), autocast(device):
        for start in range(0, len(ids), batch_size):
            out.append(model(to_float(x[ids[start : start + batch_size]])).float())
    model.train(was_training)
    if not out:
        return torch.empty(0, 0, device=x.device)
    return torch.cat(out)


def evaluate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    ids: torch.Tensor | None = None,
    batch_size: int = 1024,
) -> Eval:
    """Accuracy (percent) and mean cross-entropy on ``x[ids]``."""
    if ids is not None and len(ids) == 0:
        return Eval(float("nan"), float("nan"), 0)
    logits = predict(model, x, ids, batch_size)
    target = y if ids is None else y[ids.to(y.device)]
    target = target.to(logits.device)
    acc = (logits.argmax(1) == target).float().mean().item() * 100.0
    loss = F.cross_entropy(logits, target).item()
    return Eval(acc, loss, len(target))
