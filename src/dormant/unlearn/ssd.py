from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal

from dormant.unlearn.base import (
    NonNegative,
    PositiveInt,
    StepHparams,
    Strength,
    UnlearnData,
    hyperparameters,
    register_method,
    subsample,
)

if TYPE_CHECKING:
    import torch
    from torch import nn

    from dormant.engine.grads import Grads


@hyperparameters
class SSDHparams(StepHparams):
    """Selective Synaptic Dampening: shrink the weights far more important to the forget set
    than to the training set (Foster et al. 2024).

    ``variant="original"`` (default) is Foster et al.'s ``ParameterPerturber``. Importance
    I_S = (1/#batches) sum over batches of the squared gradient of the batch-mean CE, in eval
    mode, batches of ``batch_size`` (their 128) taken in order: I_D on the whole train set
    (retain, then forget, as their concatenated loader; each part in a seeded random order, as
    their random split leaves it) and I_f on the forget set. Entries with I_f > alpha * I_D are
    multiplied by min(lambda * I_D / I_f, 1); every other entry stays bit-for-bit. No training
    follows, so steps, lr, optimizer and weight_decay are unused. alpha
    (``selection_weighting``) = 10 and lambda (``dampening_constant``) = 1 are their values for
    every ResNet-18 CIFAR task (exponent 1).

    ``variant="seed"`` is the form the seed paper ran (Siddiqui et al. 2025): summed (not
    averaged) squared batch gradients F_r on the retain set and F_f on the forget set,
    beta = clamp(F_r / (F_f + 1e-6), 0, 1) on every entry (alpha and lambda unused), theta <-
    beta * theta, then CE fine-tuning on the retain set with the step budget (their Adam, lr
    1e-5, 39,100 steps). Only this variant uses the step fields.

    ``max_samples`` caps the large set's importance (train set, or retain set for the seed
    variant) at a seeded random subset; None uses all of it, as both originals do. BatchNorm
    buffers are never touched.
    """

    # lower alpha selects more weights for dampening; the original variant trains nothing,
    # so its learning rate cannot be the knob
    strength: ClassVar[Strength | None] = Strength("selection_weighting",
                                                   (0.3, 1.0, 3.0, 10.0), weaker="higher")

    selection_weighting: NonNegative = 10.0
    dampening_constant: NonNegative = 1.0
    variant: Literal["original", "seed"] = "original"
    max_samples: PositiveInt | None = None


def _shuffled(ids: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    import torch

    return ids[torch.randperm(len(ids), generator=g).to(ids.device)]


def selective_dampening(model: nn.Module, imp_d: Grads, imp_f: Grads, alpha: float,
                        lam: float) -> int:
    """Foster et al.'s update in place; returns how many entries were dampened."""
    import torch

    dampened = 0
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name not in imp_f:
                continue
            d, f = imp_d[name], imp_f[name]
            selected = f > alpha * d
            # only selected entries are divided, and there f > alpha * d >= 0
            beta = torch.where(selected, lam * d / f.where(selected, 1.0), 1.0).clamp(max=1.0)
            p.copy_(torch.where(selected, p * beta.to(p.dtype), p))
            dampened += int(selected.sum())
    return dampened


def seed_dampening(model: nn.Module, imp_r: Grads, imp_f: Grads) -> None:
    """The seed paper's update in place: every entry times clamp(F_r / (F_f + 1e-6), 0, 1)."""
    import torch

    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in imp_f:
                p.mul_((imp_r[name] / (imp_f[name] + 1e-6)).clamp(0.0, 1.0).to(p.dtype))


def _importances(model: nn.Module, data: UnlearnData, hp: SSDHparams,
                 g: torch.Generator) -> tuple[Grads, Grads]:
    import torch

    from dormant.engine.grads import batch_grad_importance

    forget = _shuffled(data.forget, g)
    if hp.variant == "original":
        big = subsample(torch.cat([_shuffled(data.retain, g), forget]), hp.max_samples, g)
        reduce = "mean"
    else:
        big = subsample(_shuffled(data.retain, g), hp.max_samples, g)
        reduce = "sum"
    imp_big = batch_grad_importance(model, data.x, data.y, big, batch_size=hp.batch_size,
                                    reduce=reduce)
    imp_f = batch_grad_importance(model, data.x, data.y, forget, batch_size=hp.batch_size,
                                  reduce=reduce)
    return imp_big, imp_f


@register_method("ssd", SSDHparams)
def ssd(model, data, hp, ctx):
    import torch

    from dormant.engine import fit

    g = torch.Generator().manual_seed(ctx.seed)
    imp_big, imp_f = _importances(model, data, hp, g)
    if hp.variant == "original":
        selective_dampening(model, imp_big, imp_f, hp.selection_weighting,
                            hp.dampening_constant)
        if ctx.progress is not None:
            ctx.progress("ssd", 1, 1)
        return model
    seed_dampening(model, imp_big, imp_f)
    fit(model, data.x, data.y, data.retain, hp.recipe(ctx.recipe), generator=g,
        progress=ctx.progress, label="ssd")
    return model
