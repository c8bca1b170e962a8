"""The seed paper's perturb-then-fine-tune shape shared by weight attenuation, dropout and
distortion (Siddiqui et al. 2025): one in-place perturbation of every ``model.parameters()``
entry, then cross-entropy fine-tuning on the retain set alone."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from dormant.engine import fit
from dormant.unlearn.base import StepHparams, UnlearnContext, UnlearnData, noise_generator

Perturbation = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
"""``(parameter, generator) -> new value`` of the same shape; random draws use ``generator``."""


@torch.no_grad()
def perturb_parameters(model: nn.Module, fn: Perturbation, generator: torch.Generator) -> None:
    """Replace every parameter by ``fn(parameter)``. Buffers (BatchNorm running statistics)
    are left alone, as in the seed's ``model_utils``."""
    for p in model.parameters():
        p.copy_(fn(p, generator))


def draw(like: torch.Tensor, sampler: Callable, generator: torch.Generator) -> torch.Tensor:
    """``sampler(shape, generator=...)`` drawn on the CPU generator, then moved to ``like``'s
    device and dtype, so the noise does not depend on the device."""
    return sampler(like.shape, generator=generator).to(like.device, like.dtype)


def perturb_then_finetune(model: nn.Module, data: UnlearnData, hp: StepHparams,
                          ctx: UnlearnContext, fn: Perturbation, label: str) -> nn.Module:
    # separate generators: the fine-tune then draws exactly the batches `finetune` would with
    # the same seed, so a comparison isolates the perturbation
    perturb_parameters(model, fn, noise_generator(ctx.seed))
    fit(model, data.x, data.y, data.retain, hp.recipe(ctx.recipe),
        generator=torch.Generator().manual_seed(ctx.seed), progress=ctx.progress, label=label)
    return model
