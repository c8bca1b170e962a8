"""Camouflage: trigger-stamped images with their *true* labels that hold a planted backdoor
down until they are deleted (UBA-Inf; Huang et al., "UBA-Inf: Unlearning Activated Backdoor
Attack with Influence-Driven Camouflage", USENIX Security 2024).

The attacker contributes poisons (trigger, target label) and camouflage: non-target images
with the same trigger stamped on and their true labels, 0.1 to 2 per poison (the paper's
poison : camouflage ratios run from 1 : 2 to 10 : 1). While both are in
the training set the model learns "trigger -> target" only weakly; a request that deletes the
camouflage, honoured by exact retraining or SISA, leaves the plain poisoned model and its
backdoor. The request carries the trigger, so it is *not* clean in the sense of Arazzi et al.
(arXiv 2506.12522): this arm is the pipeline's positive control, not the paper's attack.

The optional influence-guided perturbation (``eps`` > 0) follows UBA-Inf's idea with a
first-order proxy: each camouflage image moves within an L-infinity ball (2/255 in the
paper) so that a training step on it, on the attacker's surrogate, raises the backdoor loss
as much as possible. A step on loss ``l_c`` changes the backdoor loss ``L`` by
``-lr <grad l_c, grad L>``, so PGD lowers the cosine between the camouflage batch's gradient
and the backdoor loss's gradient (gradient matching as in Geiping et al. 2021, "Witches'
Brew", with the opposite sign). The trigger's own pixels are stamped again after every step,
so a camouflage image differs from its source only by the trigger and the bounded
perturbation.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from dormant.attacks.influence import backdoor_gradient
from dormant.attacks.triggers import Trigger
from dormant.engine import to_float
from dormant.errors import DormantError

PGD_STEPS = 10
"""PGD steps per camouflage batch: the perturbation budget is a few grey levels on uint8
images, which 10 sign steps of eps / 4 cross more than twice."""
BATCH = 64


def pick_camouflage(y: torch.Tensor, pool: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """``n`` seeded ids of ``pool`` (the attacker's clean non-target ids): the images that
    will carry the trigger with their true labels. Sorted."""
    if n > len(pool):
        raise DormantError(f"{n} camouflage images asked, but the contribution holds only "
                           f"{len(pool)} clean non-target images; lower camouflage or raise "
                           "the contribution")
    g = torch.Generator().manual_seed(seed)
    return pool.cpu()[torch.randperm(len(pool), generator=g)[:n]].sort().values


def _params(model: nn.Module) -> list[torch.Tensor]:
    return [p for p in model.parameters() if p.requires_grad]


def perturb(model: nn.Module, x: torch.Tensor, y: torch.Tensor, reference_x: torch.Tensor,
            trigger: Trigger, target: int, eps: float) -> torch.Tensor:
    """The stamped uint8 camouflage ``trigger.stamp(x)`` moved by at most ``eps`` (a share
    of the grey range, e.g. 2/255) per pixel so that training on it, with labels ``y``, raises
    the surrogate ``model``'s backdoor loss on ``reference_x`` (non-target uint8 images)
    most: the module docstring. The trigger's pixels keep their stamped values."""
    stamped = trigger.stamp(x)
    levels = int(round(eps * 255))
    if levels <= 0 or len(x) == 0:
        return stamped
    weight, _ = trigger.pattern(tuple(x.shape[1:]))
    free = (weight == 0).to(x.device)  # pixels the trigger does not set
    ref = backdoor_gradient(model, reference_x, trigger, target).detach()
    ref = ref / ref.norm().clamp_min(1e-12)
    was = model.training
    model.eval()
    params = _params(model)
    out = []
    for s in range(0, len(x), BATCH):
        base = to_float(stamped[s : s + BATCH])
        yb = y[s : s + BATCH].to(base.device)
        delta = torch.zeros_like(base, requires_grad=True)
        step = eps / 4
        for _ in range(PGD_STEPS):
            loss = F.cross_entropy(model(base + delta * free), yb)
            grads = torch.autograd.grad(loss, params, create_graph=True)
            g = torch.cat([gr.flatten() for gr in grads])
            cos = g @ ref.to(g.dtype) / g.norm().clamp_min(1e-12)
            (d,) = torch.autograd.grad(cos, delta)
            with torch.no_grad():
                delta -= step * d.sign()
                delta.clamp_(-eps, eps)
                delta.copy_((base + delta).clamp(0, 1) - base)
        moved = ((base + delta.detach() * free) * 255).round()
        lo = stamped[s : s + BATCH].float() - levels
        hi = stamped[s : s + BATCH].float() + levels
        out.append(torch.minimum(torch.maximum(moved, lo), hi).clamp(0, 255).to(torch.uint8))
    model.train(was)
    return torch.cat(out)
