from __future__ import annotations

import copy
import math
from typing import TYPE_CHECKING, Literal

from dormant.unlearn.base import (
    NonNegative,
    NonNegativeInt,
    Positive,
    StoppableHparams,
    hyperparameters,
    register_method,
    stop_when_forgotten,
)

if TYPE_CHECKING:
    import torch


@hyperparameters
class ScrubHparams(StoppableHparams):
    """SCRUB: push the student away from the original teacher on the forget set and keep it
    close to the teacher and the labels on the retain set (Kurmanji et al. 2023).

    Seed alternating form (Siddiqui et al. 2025 `alternating_scrub`): each cycle is a full
    forget pass minimising -KL_T(teacher || student), then a full retain pass minimising
    alpha * KL_T + gamma * CE. Defaults are the seed's train.sh values, T = 1 and
    alpha = gamma = 1, with max passes in every cycle (``max_cycles`` None) and the seed budget
    (Adam lr 1e-5, 39,100 steps). The teacher is theta_pre, frozen in eval mode as in the
    official code (the seed keeps it in train mode).

    ``kl_reduction`` is how KL_T = T^2 * KL(softmax(t/T) || softmax(s/T)) is reduced, in both
    passes. ``"mean"`` (default) divides the summed KL by batch x classes: the seed's
    ``torch.nn.KLDivLoss()`` (default reduction; vision_unlearner.py ``compute_retain_loss``
    and ``compute_forget_loss``), so that the seed's alpha = 1 weighs the retain KL against CE
    as the seed does. ``"batchmean"`` divides by the batch only: the official
    ``DistillKL`` (meghdadk/SCRUB, thirdparty/repdistiller), C times larger, which the
    official alpha values below assume.

    Official large-scale values: ``kl_reduction="batchmean"``, T = 4, gamma = 0.99,
    alpha = 0.001, max passes in the first 2 of 3 epochs (``max_cycles=2``), SGD lr 5e-4,
    momentum 0.9, wd 5e-4, forget batch 32.
    """

    T: Positive = 1.0
    alpha: NonNegative = 1.0
    gamma: NonNegative = 1.0
    max_cycles: NonNegativeInt | None = None
    kl_reduction: Literal["mean", "batchmean"] = "mean"


def kl_t(student: torch.Tensor, teacher: torch.Tensor, T: float,
         reduction: str = "mean") -> torch.Tensor:
    """T^2 * KL(softmax(teacher/T) || softmax(student/T)), summed over classes and divided by
    the batch (``"batchmean"``) or by batch x classes (``"mean"``, torch's element mean)."""
    import torch.nn.functional as F

    log_s = F.log_softmax(student.float() / T, dim=1)
    kl = F.kl_div(log_s, F.softmax(teacher.float() / T, dim=1), reduction="batchmean") * T * T
    # F.kl_div's own "mean" warns that it is not the true KL; dividing is the same number
    return kl / student.shape[1] if reduction == "mean" else kl


@register_method("scrub", ScrubHparams)
def scrub(model, data, hp, ctx):
    import torch
    import torch.nn.functional as F

    from dormant.engine import BatchStream, prepare_model, to_float, train_loop
    from dormant.engine.augment import augment

    recipe = hp.recipe(ctx.recipe)
    g = torch.Generator().manual_seed(ctx.seed)
    teacher = prepare_model(copy.deepcopy(ctx.pretrained), data.x.device)
    teacher.eval().requires_grad_(False)
    forget = BatchStream(data.forget, recipe.batch_size, g)
    retain = BatchStream(data.retain, recipe.batch_size, g)
    n_forget = math.ceil(len(data.forget) / forget.batch_size)
    cycle = n_forget + math.ceil(len(data.retain) / retain.batch_size)
    max_until = math.inf if hp.max_cycles is None else hp.max_cycles * cycle

    def loss(step):
        maximising = step < max_until and step % cycle < n_forget
        b = forget() if maximising else retain()
        xb = augment(to_float(data.x[b]), recipe.augment, recipe.pad, g)
        with torch.no_grad():
            t = teacher(xb)
        s = model(xb)
        kl = kl_t(s, t, hp.T, hp.kl_reduction)
        if maximising:
            return -kl
        return hp.alpha * kl + hp.gamma * F.cross_entropy(s, data.y[b])

    train_loop(model, recipe, loss, hook=stop_when_forgotten(data, hp),
               progress=ctx.progress, label="scrub")
    return model
