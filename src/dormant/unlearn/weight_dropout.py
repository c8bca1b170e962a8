from __future__ import annotations

from typing import Annotated, ClassVar

from pydantic import Field

from dormant.unlearn.base import StepHparams, Strength, hyperparameters, register_method
from dormant.unlearn.perturb import draw, perturb_then_finetune


@hyperparameters
class WeightDropoutHparams(StepHparams):
    """Weight dropout: zero each parameter entry with probability ``p``, then fine-tune on
    the retain set (Siddiqui et al. 2025, an ablation of their weight distortion).

    ``p = 0.2`` is the seed's `weight_dropout` (scripts/train.sh, `unlearning_alpha`). As in
    the seed's `drop_model_parameters` the survivors are not rescaled by 1/(1-p), and
    BatchNorm running statistics are untouched. The fine-tune is the seed's: CE on the
    retain set, a fresh Adam, lr 1e-5, wd 0, 39,100 steps.

    Calibration turns ``p`` against the oracle's accuracy on the leakable ids, as for weight
    distortion: the dropped weights are what disturbs the forget set's fit. The factors
    0.5-3 keep ``p`` a probability below 1 for any ``p`` up to 1/3 (the default's 0.2 gives
    0.1-0.6); ``p`` is a fraction of each tensor's entries, so it transfers across model sizes
    as it is.
    """

    p: Annotated[float, Field(ge=0, le=1)] = 0.2

    strength: ClassVar[Strength | None] = Strength("p", (0.5, 1.0, 2.0, 3.0), "leakable")


def drop(p: float):
    """The perturbation ``theta <- theta * b``, ``b_i ~ Bernoulli(1 - p)``, no rescaling."""
    import torch

    return lambda w, g, _s: w * (draw(w, torch.rand, g) >= p)


@register_method("weight_dropout", WeightDropoutHparams)
def weight_dropout(model, data, hp, ctx):
    return perturb_then_finetune(model, data, hp, ctx, drop(hp.p), "weight_dropout")
