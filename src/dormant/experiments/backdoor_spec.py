"""The backdoor study's declarative spec, validated by pydantic (unknown keys are errors).

A study is methods x conditions x seeds. ``attack``, ``random-clean`` and ``unpoisoned`` run
every method; ``none``, ``badnets`` and ``blended`` involve no unlearning and run once per seed.
"""

from __future__ import annotations

from typing import Annotated, ClassVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from dormant.attacks import PoisonSpec, Trigger
from dormant.attacks.clean_unlearning import STRATEGIES, CleanUnlearningSpec
from dormant.attacks.triggers import KINDS
from dormant.experiments.spec import NonNegative
from dormant.settings import Axis, choice
from dormant.unlearn import PresetName, resolve_hparams

CONDITIONS = ("attack", "random-clean", "unpoisoned", "none", "badnets", "blended")
UNLEARNING_CONDITIONS = ("attack", "random-clean", "unpoisoned")
DEFAULT_METHODS = ["retrain", "bad_teacher", "fisher_forgetting", "boundary_shrink",
                   "boundary_expand", "gradient_ascent", "neggrad_plus"]


class TriggerSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: str = "noise"
    amplitude: float = Field(default=0.1, ge=0.0, le=1.0)
    size: int = Field(default=3, ge=1)
    frequency: float = Field(default=6.0, gt=0)
    seed: int = 1

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, v: str) -> str:
        if v not in KINDS:
            raise ValueError(f"unknown trigger {v!r}; use one of {', '.join(KINDS)}")
        return v

    def build(self) -> Trigger:
        return Trigger(self.kind, self.amplitude, self.size, self.frequency, self.seed)


class DefenseSpec(BaseModel):
    """The defenses the study runs, one key per registered defense (``dormant.defenses``:
    ``nc``, ``cd``, ``ibau``), each holding that defense's own config. A key left out runs the
    defense's ``cpu`` preset (sized for a CPU; the paper's defaults live in each defense's
    config and its ``paper`` preset); a mapping is layered over that preset key by key
    (``nc: {epochs: 5}``); ``false`` switches the defense off, ``true`` runs the preset.

    ``defense_size``: clean test images held by the defender (NC reverses on the first
    ``nc.images`` of them, I-BAU uses them all); never used for the metrics."""

    model_config = ConfigDict(extra="allow", frozen=True)

    defense_size: int = Field(default=500, ge=10)

    MOVED: ClassVar[dict[str, str]] = {
        "nc_epochs": "nc.epochs", "nc_images": "nc.images", "nc_batch": "nc.batch_size",
        "cd_images": "cd.images", "cd_steps": "cd.steps", "ibau_rounds": "ibau.rounds"}
    """The flat keys of the study files before the defenses' settings were nested."""

    @model_validator(mode="before")
    @classmethod
    def _registered(cls, data):
        from dormant.defenses.registry import available_defenses, defense_config, get_defense

        if not isinstance(data, dict):
            return data
        known = available_defenses()
        unknown = [k for k in data if k != "defense_size" and k not in known]
        if unknown and unknown[0] in cls.MOVED:
            d, key = cls.MOVED[unknown[0]].split(".")
            raise ValueError(f"key {unknown[0]!r} moved into its defense's own settings: write "
                             f"{d}: {{{key}: {data[unknown[0]]}}}")
        if unknown:
            raise ValueError(f"unknown defense {unknown[0]!r}; the registered defenses are "
                             f"{', '.join(known)} (and defense_size)")
        out = {k: v for k, v in data.items() if k == "defense_size"}
        for name in known:
            out[name] = (defense_config(name, data[name]) if name in data
                         else get_defense(name).study_default())
        return out

    def config(self, name: str):
        """Defense ``name``'s config, or ``None`` when it is off."""
        return (self.model_extra or {}).get(name)

    def active(self, stage: str) -> list[tuple[object, object]]:
        """``(DefenseInfo, config or None)`` of every registered defense of ``stage``."""
        from dormant.defenses.registry import available_defenses, get_defense

        return [(get_defense(n), self.config(n)) for n in available_defenses()
                if get_defense(n).stage == stage]


def _matched(v: list[str]) -> list[str]:
    if "random-clean" in v and "attack" not in v:
        raise ValueError("random-clean is strength-matched to the attack's request: add the "
                         "attack condition too")
    return v


Conditions = Annotated[Axis[choice("condition", *CONDITIONS)], AfterValidator(_matched)]
Strategy = choice("request strategy", *STRATEGIES)


class BackdoorSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    dataset: str = "mnist"
    data_root: str | None = None
    download: bool = False
    train_size: int | None = Field(default=10_000, gt=0)
    test_size: int | None = Field(default=2_000, gt=0)
    model: str | None = None
    train_steps: int | None = Field(default=None, gt=0)
    train_recipe: dict = Field(default_factory=dict)
    methods: Axis[str] = Field(default_factory=lambda: list(DEFAULT_METHODS))
    hparams: dict[str, dict] = Field(default_factory=dict)
    """Per-method hyper-parameters, over the preset's values key by key."""
    preset: PresetName = None
    """The methods' preset (``dormant methods --preset``); None: ``backdoor``, the budgets
    picked for this study on a CPU (methods without one run their class defaults)."""
    conditions: Conditions = Field(default_factory=lambda: list(CONDITIONS[:4]))
    seeds: Axis[NonNegative] = Field(default_factory=lambda: [0, 1, 2])
    trigger: TriggerSpec = Field(default_factory=TriggerSpec)
    target: int = Field(default=0, ge=0)
    poisons_per_class: int = Field(default=3, ge=1)
    sources: list[int] | None = None
    label_mode: str = "dirty"
    contribution: float = 0.2
    request: int = Field(default=300, ge=1)
    strategy: Strategy = "margin"
    strength_match: bool = True
    match_budget: float = Field(default=4.0, ge=1.0)
    """The strength-matched control may run this many times the attack's step budget to
    reach the attack's drop in forget accuracy (it stops as soon as it does)."""
    baseline_ratio: float = Field(default=0.1, gt=0, lt=1)
    """Share of the training set poisoned by the BadNets and Blended baselines."""
    defenses: DefenseSpec = Field(default_factory=DefenseSpec)
    device: str = "auto"

    def method_hparams(self, method: str, n_train: int | None = None) -> dict:
        """``resolve_hparams`` under ``preset`` (None: ``backdoor``) with ``hparams[method]``
        on top; a preset in epochs counts ``n_train`` images (default ``train_size``)."""
        return resolve_hparams(method, self.preset or "backdoor", self.hparams.get(method, {}),
                               n_train=n_train or self.train_size)

    def attack(self) -> CleanUnlearningSpec:
        """The clean-unlearning attack; bad values raise ``DormantError`` naming them."""
        sources = tuple(self.sources) if self.sources is not None else None
        return CleanUnlearningSpec(
            PoisonSpec(self.target, self.trigger.build(), self.poisons_per_class, sources,
                       self.label_mode),
            self.contribution, self.request, self.strategy)


def baseline_triggers() -> dict[str, Trigger]:
    """BadNets' 3x3 patch (Gu et al. 2017) and Blended at BackdoorBench's alpha 0.2 (Chen et
    al. 2017 blend a fixed image; a seeded noise image here)."""
    return {"badnets": Trigger("patch", 1.0, 3), "blended": Trigger("blend", 0.2, seed=2)}
