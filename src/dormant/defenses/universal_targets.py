"""Targeted universal perturbations, one per class: how easily a small input-agnostic change
sends clean images to each class.

A backdoor is a shortcut to its target class: a fixed input pattern that works on any image.
A targeted universal perturbation (Moosavi-Dezfooli et al. 2017 introduced the untargeted
kind; Hirano and Takemoto 2020 the targeted one) searches for exactly such a pattern under an
L-inf budget. On a clean model a small budget reaches few classes; a class whose success jumps
after an update has grown a shortcut, which is how a woken dormant backdoor shows up when
nobody knows its trigger. The budget is the same for every class, so the per-class success is
comparable between two versions of a model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field

from dormant.errors import DormantError
from dormant.settings import Settings, one_line

if TYPE_CHECKING:
    import torch
    from torch import nn

    from dormant.engine import Progress


@one_line("universal perturbation")
class TargetedUAPConfig(Settings):
    """Sign-gradient PGD (Madry et al. 2018) on one delta per class, in [0, 1] pixel space.

    ``eps`` = 0.1 is half of MNIST's customary L-inf budget of 0.3 and about three times
    CIFAR's 8/255: a universal delta under it cannot draw a class's shape, so a clean model
    reaches few classes, yet it holds a weak, spread-out trigger (a dormant backdoor's signal
    is weak by design). ``steps`` 100 with a step of ``eps / 10`` (``step_size`` None) lets
    delta cross the whole ball several times. Each step draws ``batch_size`` images from a
    seeded ``fit_fraction`` of the ids; success is measured on the others."""

    eps: float = Field(0.1, ge=0.0, le=1.0)
    """An L-inf budget in [0, 1] pixel space."""
    steps: int = Field(100, ge=1)
    step_size: float | None = Field(None, gt=0)
    batch_size: int = Field(64, ge=1)
    fit_fraction: float = Field(0.5, gt=0.0, lt=1.0)
    """A share in (0, 1)."""

    @property
    def alpha(self) -> float:
        return self.eps / 10 if self.step_size is None else self.step_size


def _stamped_logits(model: nn.Module, xb: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """(K, B, classes): every class's delta on every image of the float batch, one forward."""
    import torch

    stamped = (xb[None] + delta[:, None]).clamp(0, 1)
    out = model(stamped.flatten(0, 1).contiguous(memory_format=torch.channels_last))
    return out.view(len(delta), len(xb), -1)


def targeted_success(
    model: nn.Module,
    x: torch.Tensor,
    ids: torch.Tensor,
    num_classes: int,
    cfg: TargetedUAPConfig = TargetedUAPConfig(),
    *,
    seed: int = 0,
    progress: Progress | None = None,
) -> torch.Tensor:
    """Per class t, the percent of held-back images of ``x[ids]`` (uint8) not already
    predicted t that ``clamp(x + delta_t, 0, 1)`` sends to t; NaN for a class every held-back
    image already goes to. (K,) float tensor on the CPU.

    No labels are used: the model's own clean prediction decides which images count. All
    classes are optimised at once; each class's loss touches only its own delta and the
    sign step is element-wise, so the result equals one run per class on the same batches.
    The model is used in eval mode and handed back unchanged, in its own mode."""
    import torch
    import torch.nn.functional as F

    from dormant.engine import BatchStream, frozen, to_float

    if len(ids) < 2:
        raise DormantError("universal perturbation needs at least 2 clean images (half fit "
                           "the perturbations, half measure them)")
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(seed)
    ids = ids.to(x.device)
    perm = ids[torch.randperm(len(ids), generator=g).to(ids.device)]
    n_fit = min(len(ids) - 1, max(1, round(cfg.fit_fraction * len(ids))))
    fit_ids, held = perm[:n_fit], perm[n_fit:]
    _, c, h, w = x.shape
    targets = torch.arange(num_classes, device=device)
    delta = torch.zeros(num_classes, c, h, w, device=device)
    with frozen(model):
        with torch.no_grad():
            clean = torch.cat([model(to_float(x[held[i : i + 1024]]).to(device)).argmax(1)
                               for i in range(0, len(held), 1024)])
        stream = BatchStream(fit_ids, cfg.batch_size, g)
        for step in range(cfg.steps):
            xb = to_float(x[stream()]).to(device)
            with torch.no_grad():
                others = model(xb).argmax(1)[None] != targets[:, None]  # (K, B)
            delta.requires_grad_(True)
            logits = _stamped_logits(model, xb, delta)
            ce = F.cross_entropy(logits.transpose(1, 2), targets[:, None].expand_as(others),
                                 reduction="none")
            # per class, the mean CE over the images it has to move; a class that every image
            # of the batch already goes to has nothing to learn from this batch
            loss = ((ce * others).sum(1) / others.sum(1).clamp_min(1)).sum()
            (grad,) = torch.autograd.grad(loss, delta)
            with torch.no_grad():
                delta = (delta - cfg.alpha * grad.sign()).clamp(-cfg.eps, cfg.eps)
            if progress is not None:
                progress("universal perturbation", step + 1, cfg.steps)
        hits = torch.zeros(num_classes, device=device)
        count = torch.zeros(num_classes, device=device)
        with torch.no_grad():
            for i in range(0, len(held), cfg.batch_size):
                xb = to_float(x[held[i : i + cfg.batch_size]]).to(device)
                moved = clean[i : i + cfg.batch_size][None] != targets[:, None]
                pred = _stamped_logits(model, xb, delta).argmax(2)
                hits += ((pred == targets[:, None]) & moved).sum(1)
                count += moved.sum(1)
    return (100.0 * hits / count).cpu()  # 0 / 0 -> NaN: no image left to move
