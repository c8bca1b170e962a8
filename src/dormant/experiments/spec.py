"""The relearning study's declarative spec, validated by pydantic (unknown keys are errors).

A study is a grid: methods (with hyper-parameters, optionally chained with ``then:``) x seeds
x forget sets x k x relearn sets x attack learning rates x attack step budgets.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from dormant import plugins
from dormant.engine import Recipe
from dormant.errors import DormantError
from dormant.settings import Axis, Settings, choice, validate
from dormant.unlearn import PresetName

DEFAULT_METHODS = ["finetune", "gradient_ascent", "neggrad_plus"]
RELEARN_SETS = ("retain", "forget-only", "test", "test+retain-class")
NonNegative = Annotated[int, Field(ge=0)]
RelearnSet = choice("relearn set", *RELEARN_SETS)
MIA_ATTACKS = ("loss", "svc", "lira", "rmia", "ulira")
MiaAttack = choice("membership attack", *MIA_ATTACKS)


class MethodEntry(BaseModel):
    """One line of the study's ``methods``: a registered method under a name of its own.

    ``then`` names another entry of ``methods`` (or a registered method) that continues from
    this one's result, as the seed paper starts TAR, CBFT and weight_dist_reg from another
    method's model (its "initial safeguard"). ``calibrate`` on the first entry of a chain
    applies to the whole pipeline."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    method: str | None = None
    hparams: dict = Field(default_factory=dict)
    then: str | None = None
    calibrate: Literal["oracle", "none"] | None = None
    """This pipeline's own calibration protocol over the study's, e.g. a ``none`` row beside
    the calibrated one to show how much the verdict owes to calibration."""

    @property
    def base(self) -> str:
        return self.method or self.name


def override_recipe(base: Recipe, overrides: dict, steps: int | None = None) -> Recipe:
    """``base`` with a study's ``train_recipe`` overrides (and ``train_steps``), validated."""
    fields = {f.name for f in dataclasses.fields(Recipe)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise DormantError(f"train_recipe has no key {unknown[0]!r}; it takes: "
                           f"{', '.join(sorted(fields))}")
    steps_ = {"steps": steps} if steps else {}
    return validate(Recipe, {**base.to_dict(), **overrides, **steps_}, "train_recipe")


class DataSpec(Settings):
    """What every study trains on: the data, the model and the original's training recipe
    (the dataset profile's, ``dormant.experiments.profiles``, with ``train_recipe`` and
    ``train_steps`` over it), and the device."""

    dataset: str = "digits"
    data_root: str | None = None
    download: bool = False
    train_size: int | None = Field(default=None, gt=0)
    test_size: int | None = Field(default=None, gt=0)
    model: str | None = None
    train_steps: int | None = Field(default=None, gt=0)
    train_recipe: dict = Field(default_factory=dict)
    """Overrides of the profile's training recipe, e.g. ``{augment: none, lr: 1e-3}``."""
    device: str = "auto"
    plugins: tuple[str, ...] = Field(default=(), exclude=True)
    """Modules to load before the rest of the study is read, as ``--plugin`` does (see
    ``dormant.plugins``): a method, model or dataset of their own is then a name here like
    any other. Left out of every cache key, since where code lives is no input: a method's
    key hashes its module's code (a model's or dataset's does not; ``docs/adding-a-method.md``
    says what to do after changing one)."""

    @model_validator(mode="before")
    @classmethod
    def _load_plugins(cls, data):
        names = data.get("plugins") if isinstance(data, dict) else None
        if isinstance(names, str):
            names = [names]
        if isinstance(names, list | tuple) and all(isinstance(n, str) for n in names):
            plugins.use(*names)
            return {**data, "plugins": tuple(names)}
        return data

    def recipe(self, profile_recipe: Recipe) -> Recipe:
        """The original's (and oracle's) training recipe: the profile's, then the overrides."""
        return override_recipe(profile_recipe, self.train_recipe, self.train_steps)


class RelearnSpec(DataSpec):
    """``None`` budgets come from the dataset's profile (``dormant.experiments.profiles``)."""

    forget: Axis[str] | None = None
    cscores: str | None = None
    methods: Axis[str | MethodEntry] = Field(default_factory=lambda: list(DEFAULT_METHODS))
    hparams: dict[str, dict] = Field(default_factory=dict)
    k: Axis[NonNegative] = Field(default_factory=lambda: [0, 5])
    seeds: Axis[NonNegative] = Field(default_factory=lambda: [0])
    relearn_sets: Axis[RelearnSet] = Field(default_factory=lambda: ["retain"])
    preset: PresetName = None
    """The methods' preset (``dormant methods --preset``); None: the dataset profile's."""
    unlearn_steps: int | None = Field(default=None, gt=0)
    unlearn_lr: float | None = Field(default=None, gt=0)
    """``unlearn_steps``/``unlearn_lr`` override the preset's steps and lr of every step-based
    method (``hparams`` override them per method)."""
    attack_steps: Axis[Annotated[int, Field(gt=0)]] | None = None
    attack_lr: Axis[Annotated[float, Field(gt=0)]] | None = None
    eval_every: int | None = Field(default=None, gt=0)
    calibrate: Literal["oracle", "none"] = "oracle"
    """``oracle``: before the study, each method's declared strength hyper-parameter is picked
    from its small grid on the first seed's *leakable* forget ids, never the held-out split
    (``dormant.experiments.calibrate``); ``none`` runs the values as given."""
    stop: Literal["budget", "oracle-leakable"] = "budget"
    """``budget``: every method runs its full budget, as in the seed code. ``oracle-leakable``:
    a method with a stopping rule (``StoppableHparams``) stops once its accuracy on the
    leakable ids reaches the oracle's, checked every step; it measures a method at its
    shallowest point."""
    fit_target: float | None = Field(default=99.0, gt=0, le=100)
    """The original trains until it fits this % of its training set, checked once per epoch,
    up to ``train_steps`` (the cap); the oracle trains as many steps. ``None``: the whole cap."""
    analysis: bool = True
    lmc_points: int = Field(default=21, ge=2, le=1001)  # each point evaluates three splits
    analysis_size: int = Field(default=2000, gt=0)
    mia: list[MiaAttack] = Field(default_factory=lambda: ["loss", "svc"])
    """Membership attacks on the held-out forget split: ``loss`` and ``svc`` (population
    attacks, part of ``analysis``), ``lira`` and ``rmia`` (per example, calibrated on
    ``shadows`` shadow models) and ``ulira`` (unlearned against retrained models, per
    example, and the NeurIPS 2023 challenge's score), ``dormant.experiments.membership``.
    The per-example attacks cost ``shadows`` trainings of the original per seed, and
    ``ulira`` as many unlearning runs per method and retrainings per seed."""
    shadows: int = Field(default=16, ge=4, le=1024, multiple_of=2)
    """Shadow models per seed for ``lira``, ``rmia`` and ``ulira``, an even number (half of
    them train on the forget set): 16 is LiRA's usual small budget (one global variance), 64
    or more gives each example its own variances."""

    @field_validator("mia")
    @classmethod
    def _one_order(cls, v: list[str]) -> list[str]:
        """One order, no repeats: ``[svc, loss]`` is the same study as ``[loss, svc]``."""
        return [a for a in MIA_ATTACKS if a in v]
