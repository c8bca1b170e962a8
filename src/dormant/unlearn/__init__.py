"""Unlearning methods, one file each, registered by short name.

Add a method: write ``src/dormant/unlearn/<name>.py`` with a frozen hyper-parameter dataclass
and a function decorated with ``@register_method("<name>", Hparams)``, then import it below.
"""

from dormant.unlearn import finetune, gradient_ascent, neggrad_plus, retrain  # noqa: F401
from dormant.unlearn.base import (
    MethodInfo,
    StepHparams,
    StoppableHparams,
    UnlearnContext,
    UnlearnData,
    available_methods,
    get_method,
    make_hparams,
    register_method,
    unlearn,
)

__all__ = [
    "MethodInfo", "StepHparams", "StoppableHparams", "UnlearnContext", "UnlearnData",
    "available_methods", "get_method", "make_hparams", "register_method", "unlearn",
]
