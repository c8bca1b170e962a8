"""Unlearning methods, one file each, registered by short name.

Add a method: write ``src/dormant/unlearn/<name>.py`` with a frozen hyper-parameter dataclass
and a function decorated with ``@register_method("<name>", Hparams)``, then import it below.
"""

from dormant.unlearn import (  # noqa: F401  (importing a module registers its method)
    bad_teacher,
    boundary_expand,
    boundary_shrink,
    cbft,
    circuit_breakers,
    finetune,
    fisher_forgetting,
    gradient_ascent,
    l1_sparse,
    neggrad_plus,
    random_label,
    retrain,
    salun,
    scrub,
    ssd,
    tar,
    weight_attenuation,
    weight_dist_reg,
    weight_distortion,
    weight_dropout,
)
from dormant.unlearn.base import (
    MethodInfo,
    StepHparams,
    StoppableHparams,
    Strength,
    UnlearnContext,
    UnlearnData,
    available_methods,
    get_method,
    make_hparams,
    register_method,
    unlearn,
)

__all__ = [
    "MethodInfo", "StepHparams", "StoppableHparams", "Strength", "UnlearnContext", "UnlearnData",
    "available_methods", "get_method", "make_hparams", "register_method", "unlearn",
]
