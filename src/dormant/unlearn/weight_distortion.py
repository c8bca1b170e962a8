from dataclasses import dataclass

import torch

from dormant.errors import DormantError
from dormant.unlearn.base import StepHparams, register_method
from dormant.unlearn.perturb import draw, perturb_then_finetune


@dataclass(frozen=True)
class WeightDistortionHparams(StepHparams):
    """Weight distortion: add N(0, sigma^2) noise to every parameter, then fine-tune on the
    retain set (Siddiqui et al. 2025, one of their proposed remedies against relearning).

    ``sigma = 0.02`` is the seed's `weight_distortion` (scripts/train.sh, `unlearning_alpha`);
    the L2 move is about sigma * sqrt(n) for n parameters. BatchNorm running statistics get
    no noise. The fine-tune is the seed's: CE on the retain set, a fresh Adam, lr 1e-5, wd 0,
    39,100 steps.
    """

    sigma: float = 0.02

    def __post_init__(self) -> None:
        if self.sigma < 0:
            raise DormantError(f"weight_distortion: sigma must be >= 0, got {self.sigma}")


def distort(sigma: float):
    """The perturbation ``theta <- theta + sigma * eps``, ``eps ~ N(0, I)``."""
    return lambda w, g: w + sigma * draw(w, torch.randn, g)


@register_method("weight_distortion", WeightDistortionHparams)
def weight_distortion(model, data, hp, ctx):
    return perturb_then_finetune(model, data, hp, ctx, distort(hp.sigma), "weight_distortion")
