from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal

from dormant.unlearn.base import (
    NonNegative,
    PositiveInt,
    Preset,
    Strength,
    hyperparameters,
    noise_generator,
    register_method,
    subsample,
)

if TYPE_CHECKING:
    import torch


@hyperparameters
class FisherForgettingHparams:
    """Fisher forgetting: Gaussian noise on every weight, scaled by the inverse Fisher of the
    retain set, so weights the retain set does not need move most (Golatkar et al. 2020).

    Fisher: Golatkar's expected Fisher on the retain set, eval mode: mean over samples of
    sum_k p(k|x) (grad CE(f(x), k))^2. Variance, in their order: v = 1 / (F + 1e-8) capped at
    1e3; tensors whose first dimension is the class count capped at 1e2; v *= ``alpha``; tensors
    with ndim > 1 take the mean of v over dim 1. ``alpha`` = 1e-6 is what their callers pass
    (the function default is 3e-6). ``level="class"``: on tensors whose first dimension is the
    class count, the forget class's row gets mean 0 and variance 1e-4, then those tensors and
    the 1-D ones get v *= 10. With several labels in the forget set, every one of them is
    treated so. ``level="sample"`` (default, for a forget set of examples): only 1-D tensors
    get v *= 10. Update: theta <- mu + sqrt(v) * eps, mu = theta0 apart from the class row,
    eps ~ N(0, 1) from a generator derived from the context's seed. No training.

    The Fisher is taken over the whole retain set by default (``max_samples`` None), as the
    original's loop over the retain loader does; the per-sample gradients are computed a
    bounded chunk of samples at a time (``diag_fisher``), so memory does not grow with the
    retain set, only time does (cnn-small on a 2,940-image MNIST retain set: about 15 s of CPU
    time). ``max_samples`` caps it at a seeded random subset, an approximation the original
    does not make. BatchNorm buffers are never touched.
    """

    # the noise variance scale; at the original's alpha the MNIST study's mlp kept the forget
    # set 24 points above the oracle, so the ladder climbs from there
    strength: ClassVar[Strength | None] = Strength("alpha", (1.0, 10.0, 100.0, 1000.0))

    level: Literal["sample", "class"] = "sample"
    alpha: NonNegative = 1e-6
    max_samples: PositiveInt | None = None


def mean_and_variance(theta0: torch.Tensor, fisher: torch.Tensor, *, num_classes: int,
                      alpha: float, level: str, forget_classes: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Golatkar's per-tensor noise mean and variance for one parameter tensor."""
    head = theta0.ndim > 0 and theta0.size(0) == num_classes
    var = (1.0 / (fisher.float() + 1e-8)).clamp(max=1e3)
    if head:
        var = var.clamp(max=1e2)
    var = alpha * var
    if theta0.ndim > 1:
        var = var.mean(dim=1, keepdim=True).expand_as(theta0).clone()
    mu = theta0.detach().float().clone()
    if level == "class" and head:
        mu[forget_classes] = 0.0
        var[forget_classes] = 1e-4
    if (level == "class" and head) or theta0.ndim == 1:
        var = var * 10
    return mu, var


@register_method("fisher_forgetting", FisherForgettingHparams, presets={
    "backdoor": Preset({"max_samples": None}, doc=(
        "as the original runs it (Golatkar et al. 2020): the Fisher over the whole retain "
        "set, so that the request's absence from it is all that differs between requests")),
})
def fisher_forgetting(model, data, hp, ctx):
    import torch

    from dormant.engine.grads import diag_fisher

    g = noise_generator(ctx.seed)
    retain = subsample(data.retain, hp.max_samples, g)
    fisher = diag_fisher(model, data.x, data.y, retain, kind="expected", reduce="mean")
    forget_classes = torch.unique(data.y[data.forget])
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name not in fisher:
                continue
            mu, var = mean_and_variance(p, fisher[name], num_classes=data.num_classes,
                                        alpha=hp.alpha, level=hp.level,
                                        forget_classes=forget_classes.to(p.device))
            # drawn on the CPU so that a seed gives the same noise on every device
            eps = torch.randn(p.shape, generator=g).to(p.device)
            p.copy_((mu + var.sqrt() * eps).to(p.dtype))
    if ctx.progress is not None:
        ctx.progress("fisher_forgetting", 1, 1)
    return model
