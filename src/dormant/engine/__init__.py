"""Training and evaluation on in-memory device tensors.

Each name loads its submodule on first use (PEP 562), so code that needs only ``Recipe``
(settings, the method registry, ``dormant methods``) does not import torch."""

import importlib

_WHERE = {
    "autocast": "device", "frozen": "device", "prepare_model": "device",
    "resolve_device": "device", "to_float": "device",
    "Eval": "evaluation", "evaluate": "evaluation", "predict": "evaluation",
    "batch_grad_importance": "grads", "diag_fisher": "grads", "per_sample_grads": "grads",
    "BatchStream": "loop", "Diverged": "loop", "FitResult": "loop", "Hook": "loop",
    "Progress": "loop", "fit": "loop", "forward": "loop", "train_loop": "loop",
    "Recipe": "recipe",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
