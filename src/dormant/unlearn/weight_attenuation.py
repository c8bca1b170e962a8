from typing import Annotated, ClassVar

from pydantic import Field

from dormant.unlearn.base import (
    StepHparams,
    Strength,
    hyperparameters,
    register_method,
)
from dormant.unlearn.perturb import perturb_then_finetune


@hyperparameters
class WeightAttenuationHparams(StepHparams):
    """Weight attenuation: scale every parameter by ``a``, then fine-tune on the retain set
    (Siddiqui et al. 2025, an ablation of their weight distortion).

    ``a = 0.5`` is the seed's `weight_attenuation` (scripts/train.sh, `unlearning_alpha`).
    BatchNorm running statistics are not scaled. The fine-tune is the seed's: CE on the
    retain set, a fresh Adam, lr 1e-5, wd 0, 39,100 steps.

    Calibration turns ``a`` against the oracle's accuracy on the leakable ids, as for weight
    distortion: the shrinking is what disturbs the forget set's fit. A smaller ``a`` is the
    stronger setting, and the factors 0.25-1.5 keep ``a`` a shrink (0 < a < 1) for any
    ``a`` below 2/3, the default's 0.5 giving 0.125-0.75; ``a`` itself is an absolute, not a
    per-model, quantity (a ratio of each weight to itself), so it transfers as it is.
    """

    # a > 1 would enlarge the weights, not attenuate them: calibration's grid stops at 1
    a: Annotated[float, Field(ge=0, le=1)] = 0.5

    strength: ClassVar[Strength | None] = Strength("a", (0.25, 0.5, 1.0, 1.5), "leakable",
                                                   weaker="higher")


def attenuate(a: float):
    """The perturbation ``theta <- a * theta`` (deterministic)."""
    return lambda p, _g, _s: p * a


@register_method("weight_attenuation", WeightAttenuationHparams)
def weight_attenuation(model, data, hp, ctx):
    return perturb_then_finetune(model, data, hp, ctx, attenuate(hp.a), "weight_attenuation")
