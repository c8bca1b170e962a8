"""Neural Cleanse (Wang et al. 2019, IEEE S&P): reverse-engineer, for every class, the smallest
trigger that sends clean images to it; a class whose trigger is abnormally small is a backdoor
target.

All candidate classes are optimised at once: one forward pass carries every class's stamped
copy of the batch, and because each class has its own mask, pattern and cost, and Adam is
element-wise, the result equals running the classes one after another on the same batches.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dormant.engine import Progress, Recipe, fit, frozen, to_float
from dormant.engine.recipe import AUGMENTATIONS
from dormant.errors import DormantError

EPS = 1e-7


@dataclass(frozen=True)
class NeuralCleanseConfig:
    """Defaults from BackdoorBench's NC config: up to 80 epochs (``epochs``) over a 5% clean
    subset, batch 256, Adam lr 0.1 with betas (0.5, 0.9), initial cost 1e-3, attack success
    threshold 98%, cost patience 5 (x2 up, /2^1.5 down), early stop after 25 epochs without a
    1% gain once the cost has moved both ways; MAD threshold 2."""

    epochs: int = 80
    batch_size: int = 256
    lr: float = 0.1
    init_cost: float = 1e-3
    success: float = 0.98
    patience: int = 5
    early_stop_patience: int = 25
    mad_threshold: float = 2.0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise DormantError("neural cleanse: epochs and batch_size must be at least 1")


@dataclass(frozen=True)
class Reversed:
    masks: torch.Tensor  # (K, 1, H, W) in [0, 1]
    patterns: torch.Tensor  # (K, C, H, W) in [0, 1]
    norms: torch.Tensor  # (K,) L1 norm of each best mask
    success: torch.Tensor  # (K,) attack success of each best mask on the clean subset
    anomaly_index: float
    class_index: torch.Tensor  # (K,) (median - norm) / MAD, positive below the median
    flagged: list[int]


def _squash(w: torch.Tensor) -> torch.Tensor:
    return torch.tanh(w) / (2 - EPS) + 0.5


def mad_outliers(norms: torch.Tensor, threshold: float = 2.0
                 ) -> tuple[float, torch.Tensor, list[int]]:
    """NC's rule: MAD = 1.4826 median|l - median|; the anomaly index is |min - median| / MAD;
    flagged are classes at or below the median whose |l - median| / MAD exceeds ``threshold``."""
    med = norms.median()
    mad = 1.4826 * (norms - med).abs().median()
    mad = mad.clamp_min(1e-12)
    index = (med - norms) / mad
    flagged = [int(k) for k in torch.nonzero((norms <= med) & (index > threshold)).flatten()]
    return float((norms.min() - med).abs() / mad), index, flagged


def reverse_triggers(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    ids: torch.Tensor,
    num_classes: int,
    cfg: NeuralCleanseConfig = NeuralCleanseConfig(),
    *,
    classes: Sequence[int] | None = None,
    seed: int = 0,
    progress: Progress | None = None,
) -> Reversed:
    """Reverse-engineer every class's trigger (or those in ``classes``, in that order) from
    the clean images ``x[ids]`` (uint8); row i of the result belongs to ``classes[i]``."""
    device = next(model.parameters()).device
    _, c, h, w = x.shape
    classes = list(range(num_classes)) if classes is None else list(classes)
    k = len(classes)
    w_mask = torch.ones(k, 1, h, w, device=device, requires_grad=True)
    w_pat = torch.ones(k, c, h, w, device=device, requires_grad=True)
    opt = torch.optim.Adam([w_mask, w_pat], lr=cfg.lr, betas=(0.5, 0.9))
    targets = torch.tensor(classes, device=device)
    cost = torch.full((k,), cfg.init_cost, device=device)
    up = torch.zeros(k, dtype=torch.long, device=device)
    down = torch.zeros(k, dtype=torch.long, device=device)
    moved_up = torch.zeros(k, dtype=torch.bool, device=device)
    moved_down = torch.zeros(k, dtype=torch.bool, device=device)
    best_norm = torch.full((k,), float("inf"), device=device)
    best_mask = _squash(w_mask).detach().clone()
    best_pat = _squash(w_pat).detach().clone()
    best_success = torch.zeros(k, device=device)
    stale = torch.zeros(k, dtype=torch.long, device=device)
    active = torch.ones(k, dtype=torch.bool, device=device)
    g = torch.Generator().manual_seed(seed)
    ids = ids.to(x.device)
    with frozen(model):
        for epoch in range(cfg.epochs):
            order = ids[torch.randperm(len(ids), generator=g).to(ids.device)]
            hits = torch.zeros(k, device=device)
            seen = 0
            norm_sum = torch.zeros(k, device=device)
            batches = 0
            for start in range(0, len(order), cfg.batch_size):
                xb = to_float(x[order[start : start + cfg.batch_size]]).to(device)
                m, p = _squash(w_mask), _squash(w_pat)
                stamped = (1 - m[:, None]) * xb[None] + m[:, None] * p[:, None]
                logits = model(stamped.flatten(0, 1).contiguous(
                    memory_format=torch.channels_last)).view(k, len(xb), -1)
                ce = F.cross_entropy(logits.transpose(1, 2), targets[:, None].expand(k, len(xb)),
                                     reduction="none").mean(1)
                l1 = m.flatten(1).sum(1)
                loss = ((ce + cost * l1) * active).sum()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                hits += (logits.argmax(2) == targets[:, None]).float().sum(1).detach()
                seen += len(xb)
                norm_sum += l1.detach()
                batches += 1
            acc, norm = hits / seen, norm_sum / batches
            ok = acc >= cfg.success
            better = ok & (norm < best_norm) & active
            m, p = _squash(w_mask).detach(), _squash(w_pat).detach()
            best_mask[better], best_pat[better] = m[better], p[better]
            best_success[better] = acc[better]
            improved = better & (norm < 0.99 * best_norm)
            best_norm = torch.where(better, norm, best_norm)
            stale = torch.where(improved, torch.zeros_like(stale), stale + 1)
            # the cost schedule, per class
            cost = torch.where((cost == 0) & ok, torch.full_like(cost, cfg.init_cost), cost)
            up = torch.where(ok, up + 1, torch.zeros_like(up))
            down = torch.where(ok, torch.zeros_like(down), down + 1)
            raise_ = up >= cfg.patience
            lower = down >= cfg.patience
            cost = torch.where(raise_, cost * 2.0, cost)
            cost = torch.where(lower, cost / 2.0**1.5, cost)
            moved_up |= raise_
            moved_down |= lower
            up = torch.where(raise_, torch.zeros_like(up), up)
            down = torch.where(lower, torch.zeros_like(down), down)
            active &= ~(moved_up & moved_down & (stale >= cfg.early_stop_patience))
            if progress is not None:
                progress("neural cleanse", epoch + 1, cfg.epochs)
            if not active.any():
                break
    # a class that never reached the success threshold keeps its last mask as a fallback
    never = torch.isinf(best_norm)
    best_mask[never] = _squash(w_mask).detach()[never]
    best_pat[never] = _squash(w_pat).detach()[never]
    norms = best_mask.flatten(1).sum(1).cpu()
    anomaly, index, flagged = mad_outliers(norms, cfg.mad_threshold)
    return Reversed(best_mask.cpu(), best_pat.cpu(), norms, best_success.cpu(), anomaly,
                    index, flagged)


@dataclass(frozen=True)
class NCMitigationConfig:
    """Neural Cleanse's mitigation by unlearning: fine-tune on a clean set in which the last
    ``unlearning_ratio`` carry each flagged class's reversed trigger under their TRUE labels.

    Defaults from BackdoorBench's NC (defense/nc.py, config/defense/nc): SGD lr 0.01,
    momentum 0.9, weight decay 5e-4, batch 256, cosine decay to 0, unlearning ratio 0.2 and
    100 epochs over the clean subset. Wang et al. (2019) describe a far shorter fine-tune (about
    one epoch over 10% of the training set; their optimiser is not given). We keep
    BackdoorBench's 100 epochs: its lr, schedule and epoch count were run as one recipe, and
    our reverse-engineering defaults come from the same source. BackdoorBench steps its cosine
    per epoch; ours steps per batch. ``augment`` is the engine's training augmentation
    (BackdoorBench fine-tunes under its own training transform); "none" for digits."""

    epochs: int = 100
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 256
    unlearning_ratio: float = 0.2
    augment: str = "flip-crop"

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise DormantError("nc mitigation: epochs and batch_size must be at least 1")
        if self.lr <= 0 or self.momentum < 0 or self.weight_decay < 0:
            raise DormantError("nc mitigation: lr must be positive, momentum and weight_decay "
                               "non-negative")
        if not 0 < self.unlearning_ratio < 1:
            raise DormantError(f"nc mitigation: unlearning_ratio is a share in (0, 1), got "
                               f"{self.unlearning_ratio}")
        if self.augment not in AUGMENTATIONS:
            raise DormantError(f"nc mitigation: unknown augment {self.augment!r}; use one of "
                               f"{', '.join(AUGMENTATIONS)}")


def mitigate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    ids: torch.Tensor,
    reversed: Reversed,
    cfg: NCMitigationConfig = NCMitigationConfig(),
    *,
    seed: int = 0,
    progress: Progress | None = None,
) -> nn.Module:
    """A fine-tuned COPY of the model (the input is untouched).

    A seeded shuffle of ``ids`` is split: the first 1 - ``unlearning_ratio`` stay clean, and
    the rest appear once per flagged row of ``reversed`` stamped with that row's trigger,
    (1 - m) x + m p, under their TRUE labels (the unstamped originals are left out, as in
    BackdoorBench). SGD with a cosine schedule then runs ``epochs`` passes over the result.
    Nothing flagged means no backdoor: the copy comes back unchanged."""
    net = copy.deepcopy(model)
    if not reversed.flagged:
        return net
    if len(ids) == 0:
        raise DormantError("nc mitigation needs clean images; the clean id set is empty")
    g = torch.Generator().manual_seed(seed)
    order = ids[torch.randperm(len(ids), generator=g).to(ids.device)].to(x.device)
    split = int(len(order) * (1 - cfg.unlearning_ratio))
    keep, unlearn = order[:split], order[split:]
    xu = to_float(x[unlearn])
    xs, ys = [x[keep]], [y[keep.to(y.device)]]
    for k in reversed.flagged:
        m = reversed.masks[k].to(x.device)
        p = reversed.patterns[k].to(x.device)
        # back to uint8 like every training tensor (BackdoorBench saves stamped images as uint8)
        xs.append(((1 - m) * xu + m * p).mul(255).round().clamp(0, 255).to(torch.uint8))
        ys.append(y[unlearn.to(y.device)])
    x_new = torch.cat(xs).contiguous()
    y_new = torch.cat(ys).to(x.device)
    steps = cfg.epochs * math.ceil(len(y_new) / cfg.batch_size)
    recipe = Recipe(steps, lr=cfg.lr, optimizer="sgd", weight_decay=cfg.weight_decay,
                    momentum=cfg.momentum, batch_size=cfg.batch_size, schedule="cosine",
                    final_lr=0.0, augment=cfg.augment)
    was_training = net.training
    fit(net, x_new, y_new, torch.arange(len(y_new), device=x.device), recipe, generator=g,
        progress=progress, label="nc mitigation")
    net.train(was_training)
    return net
