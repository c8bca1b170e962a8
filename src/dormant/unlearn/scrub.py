import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dormant.engine import BatchStream, prepare_model, to_float, train_loop
from dormant.engine.augment import augment
from dormant.unlearn.base import StoppableHparams, register_method, stop_when_forgotten


@dataclass(frozen=True)
class ScrubHparams(StoppableHparams):
    """SCRUB: push the student away from the original teacher on the forget set and keep it
    close to the teacher and the labels on the retain set (Kurmanji et al. 2023).

    Seed alternating form (Siddiqui et al. 2025 `alternating_scrub`): each cycle is a full
    forget pass minimising -KL_T(teacher || student), then a full retain pass minimising
    alpha * KL_T + gamma * CE. KL_T is the official T^2-scaled, per-sample (`batchmean`) KL;
    the seed's element-mean `KLDivLoss` is that divided by C. Defaults are the seed's train.sh
    values, T = 1 and alpha = gamma = 1, with max passes in every cycle (``max_cycles`` None)
    and the seed budget (Adam lr 1e-5, 39,100 steps). The teacher is theta_pre, frozen in eval
    mode as in the official code (the seed keeps it in train mode).

    Official large-scale values: T = 4, gamma = 0.99, alpha = 0.001, max passes in the first 2
    of 3 epochs (``max_cycles=2``), SGD lr 5e-4, momentum 0.9, wd 5e-4, forget batch 32.
    """

    T: float = 1.0
    alpha: float = 1.0
    gamma: float = 1.0
    max_cycles: int | None = None


def kl_t(student: torch.Tensor, teacher: torch.Tensor, T: float) -> torch.Tensor:
    """T^2 * KL(softmax(teacher/T) || softmax(student/T)), averaged over the batch."""
    log_s = F.log_softmax(student.float() / T, dim=1)
    return F.kl_div(log_s, F.softmax(teacher.float() / T, dim=1), reduction="batchmean") * T * T


@register_method("scrub", ScrubHparams)
def scrub(model, data, hp, ctx):
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
        if maximising:
            return -kl_t(s, t, hp.T)
        return hp.alpha * kl_t(s, t, hp.T) + hp.gamma * F.cross_entropy(s, data.y[b])

    train_loop(model, recipe, loss, hook=stop_when_forgotten(data, hp),
               progress=ctx.progress, label="scrub")
    return model
