"""Training and evaluation on in-memory device tensors."""

from dormant.engine.device import autocast, frozen, prepare_model, resolve_device, to_float
from dormant.engine.evaluate import Eval, evaluate, predict
from dormant.engine.grads import batch_grad_importance, diag_fisher, per_sample_grads
from dormant.engine.loop import (
    BatchStream,
    Diverged,
    FitResult,
    Hook,
    Progress,
    fit,
    forward,
    train_loop,
)
from dormant.engine.recipe import Recipe

__all__ = [
    "frozen",
    "BatchStream", "Diverged", "Eval", "FitResult", "Hook", "Progress", "Recipe", "autocast",
    "batch_grad_importance", "diag_fisher", "evaluate", "fit", "forward", "per_sample_grads",
    "predict", "prepare_model", "resolve_device", "to_float", "train_loop",
]
