"""Training and evaluation on in-memory device tensors.

Each name loads its submodule on first use (PEP 562), so code that needs only ``Recipe``
(settings, the method registry, ``dormant methods``) does not import torch."""

from typing import TYPE_CHECKING

from dormant import lazy

if TYPE_CHECKING:  # also what a method's code revision follows (``unlearn.base``)
    from dormant.engine.device import autocast, frozen, prepare_model, resolve_device, to_float
    from dormant.engine.evaluation import Eval, evaluate, predict
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

_WHERE = {
    "autocast": "device", "frozen": "device", "prepare_model": "device",
    "resolve_device": "device", "to_float": "device",
    "Eval": "evaluation", "evaluate": "evaluation", "predict": "evaluation",
    "batch_grad_importance": "grads", "diag_fisher": "grads", "per_sample_grads": "grads",
    "BatchStream": "loop", "Diverged": "loop", "FitResult": "loop", "Hook": "loop",
    "Progress": "loop", "fit": "loop", "forward": "loop", "train_loop": "loop",
    "Recipe": "recipe",
}

__all__ = [
    "BatchStream", "Diverged", "Eval", "FitResult", "Hook", "Progress", "Recipe", "autocast",
    "batch_grad_importance", "diag_fisher", "evaluate", "fit", "forward", "frozen",
    "per_sample_grads", "predict", "prepare_model", "resolve_device", "to_float", "train_loop",
]


__getattr__, __dir__ = lazy.names(__name__, _WHERE)
