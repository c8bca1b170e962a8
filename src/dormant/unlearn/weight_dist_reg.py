from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dormant.engine import BatchStream, forward, train_loop
from dormant.unlearn.base import StepHparams, register_method

EPS = 1e-8  # the seed's, inside the square root: the gradient stays finite at theta = theta_pre


@dataclass(frozen=True)
class WeightDistRegHparams(StepHparams):
    """Weight-distance regularisation: retain CE minus alpha times the RMS distance from the
    pretrained weights (Siddiqui et al. 2025, `weight_dist_reg`, one of their remedies).

    L = CE(f(x_r), y_r) - alpha * sqrt(mean((theta_pre - theta)^2) + 1e-8), the mean running
    over all parameter entries together (an RMS, not the L2 norm); theta_pre is
    ``ctx.pretrained``. ``alpha = 1`` is the seed's (scripts/train.sh); optimiser as in the
    seed's unlearning: a fresh Adam, lr 1e-5, wd 0, 39,100 steps. The seed also draws a
    forget batch each step but never uses it; here none is drawn.
    """

    alpha: float = 1.0


def rms_distance(params, anchor) -> torch.Tensor:
    """sqrt(mean((anchor - params)^2) + EPS) over all entries, differentiable in ``params``."""
    sq = sum(((a - p) ** 2).sum() for p, a in zip(params, anchor, strict=True))
    return torch.sqrt(sq / sum(a.numel() for a in anchor) + EPS)


@register_method("weight_dist_reg", WeightDistRegHparams)
def weight_dist_reg(model, data, hp, ctx):
    recipe = hp.recipe(ctx.recipe)
    g = torch.Generator().manual_seed(ctx.seed)
    retain = BatchStream(data.retain, recipe.batch_size, g)
    params = list(model.parameters())
    anchor = [p.detach().clone() for p in ctx.pretrained.parameters()]

    def loss(_step):
        b = retain()
        ce = F.cross_entropy(forward(model, data.x, b, recipe, g), data.y[b])
        return ce - hp.alpha * rms_distance(params, anchor)

    train_loop(model, recipe, loss, progress=ctx.progress, label="weight_dist_reg")
    return model
