from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.func import functional_call

from dormant.engine import BatchStream, to_float, train_loop
from dormant.engine.augment import augment
from dormant.unlearn.base import StepHparams, register_method


@dataclass(frozen=True)
class CBFTHparams(StepHparams):
    """CBFT: retain CE plus a capped loss-raising term at the weight midpoint between the
    pretrained and the current model (Siddiqui et al. 2025, seed `mode_connectivity`, a
    simplified connectivity-based fine-tuning after Lubana et al. 2023).

    Per step, theta_mid = 0.5 theta_pre + 0.5 theta and
    L = CE(f_theta(x_r), y_r) + alpha * max(-CE(f_mid([x_r; x_f]), [y_r; y_f]), -gamma):
    the midpoint is pushed to misclassify retain and forget data alike (a loss barrier on the
    linear path) until its CE passes gamma. ``alpha = 1e-3`` and ``gamma = 50`` are the seed's
    (scripts/train.sh); optimiser as in the seed's unlearning: a fresh Adam, lr 1e-5, wd 0,
    39,100 steps.

    The midpoint forward runs in train mode, as in the seed: BatchNorm normalises with batch
    statistics, and the running statistics it updates are throwaway interpolated copies, so
    the model's own buffers are never touched by it.
    """

    alpha: float = 1e-3
    gamma: float = 50.0


def midpoint_state(model, pre: dict, t: float = 0.5) -> dict:
    """(1 - t) pre + t theta on every state entry, differentiable in theta's parameters;
    float buffers interpolated, integer buffers (BatchNorm's counter) copied from theta."""
    state = {k: (1 - t) * pre[k] + t * p for k, p in model.named_parameters()}
    for k, b in model.named_buffers():
        state[k] = (1 - t) * pre[k] + t * b if b.is_floating_point() else b.clone()
    return state


@register_method("cbft", CBFTHparams)
def cbft(model, data, hp, ctx):
    recipe = hp.recipe(ctx.recipe)
    g = torch.Generator().manual_seed(ctx.seed)
    retain = BatchStream(data.retain, recipe.batch_size, g)
    forget = BatchStream(data.forget, recipe.batch_size, g)
    pre = {k: v.detach().clone() for k, v in ctx.pretrained.state_dict().items()}

    def loss(_step):
        br, bf = retain(), forget()
        b = torch.cat([br, bf])
        # one augmented batch: the retain images in the midpoint batch are the CE ones (seed)
        x = augment(to_float(data.x[b]), recipe.augment, recipe.pad, g)
        ce = F.cross_entropy(model(x[: len(br)]), data.y[br])
        mid_ce = F.cross_entropy(functional_call(model, midpoint_state(model, pre), (x,)),
                                 data.y[b])
        return ce + hp.alpha * torch.clamp(-mid_ce, min=-hp.gamma)

    train_loop(model, recipe, loss, progress=ctx.progress, label="cbft")
    return model
