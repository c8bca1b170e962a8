"""Unlearning methods, one file each, registered by short name.

Add a method: write ``src/dormant/unlearn/<name>.py`` with a ``@hyperparameters`` class (a
frozen pydantic dataclass) and a function decorated with ``@register_method("<name>", Hparams,
presets={...})``, then import it below. ``resolve_hparams`` turns a method, a preset and
overrides into the values a run uses; every command goes through it.
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
    sisa,
    ssd,
    tar,
    weight_attenuation,
    weight_dist_reg,
    weight_distortion,
    weight_dropout,
)
from dormant.unlearn.base import (
    PAPER,
    MethodInfo,
    Preset,
    PresetName,
    StepHparams,
    StoppableHparams,
    Strength,
    UnlearnContext,
    UnlearnData,
    available_methods,
    available_presets,
    get_method,
    get_preset,
    hyperparameters,
    make_hparams,
    method_provenance,
    method_revision,
    register_method,
    resolve_hparams,
    unlearn,
)

__all__ = [
    "PAPER", "MethodInfo", "Preset", "PresetName", "StepHparams", "StoppableHparams", "Strength",
    "UnlearnContext", "UnlearnData", "available_methods", "available_presets", "get_method",
    "get_preset", "hyperparameters", "make_hparams", "method_provenance", "method_revision",
    "register_method", "resolve_hparams", "unlearn",
]
