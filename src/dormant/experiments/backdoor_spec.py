"""The backdoor study's declarative spec, validated by pydantic (unknown keys are errors).

A study is methods x conditions x seeds. ``attack``, ``random-clean`` and ``unpoisoned`` run
every method; ``none``, ``badnets`` and ``blended`` involve no unlearning and run once per seed.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from dormant.attacks import PoisonSpec, Trigger
from dormant.attacks.clean_unlearning import STRATEGIES, CleanUnlearningSpec
from dormant.attacks.triggers import KINDS

CONDITIONS = ("attack", "random-clean", "unpoisoned", "none", "badnets", "blended")
UNLEARNING_CONDITIONS = ("attack", "random-clean", "unpoisoned")
DEFAULT_METHODS = ["retrain", "bad_teacher", "fisher_forgetting", "boundary_shrink",
                   "boundary_expand", "gradient_ascent", "neggrad_plus"]


# Unlearning budgets picked on MNIST seed 0 (10,000 images, cnn-small): Adam lr 1e-4, as many
# steps as keep clean accuracy within a few points there. The methods' own defaults (the
# seed paper's 39,100 steps at 1e-5) are sized for CIFAR ResNets on a GPU.
DEFAULT_HPARAMS = {
    "bad_teacher": {"steps": 100, "lr": 1e-4},
    "fisher_forgetting": {"max_samples": 1000},
    "boundary_shrink": {"steps": 15, "lr": 1e-4},
    "boundary_expand": {"steps": 60, "lr": 1e-4},
    "gradient_ascent": {"steps": 10, "lr": 1e-4},
    "neggrad_plus": {"steps": 50, "lr": 1e-4},
}


def _listify(v):
    return v if isinstance(v, list) else [v]


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
    """Budgets of the three scans. The papers' own defaults live in each defense's config;
    these trade a little of them for a study that fits a CPU."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    nc: bool = True
    nc_epochs: int = Field(default=30, ge=1)
    nc_images: int = Field(default=200, ge=10)
    """Of the defender's images, how many Neural Cleanse reverses triggers on."""
    nc_batch: int = Field(default=32, ge=1)
    cd: bool = True
    cd_images: int = Field(default=200, ge=2)
    cd_steps: int = Field(default=100, ge=1)
    ibau: bool = True
    ibau_rounds: int = Field(default=20, ge=1)
    """I-BAU rounds over the ``defense_size`` clean images: at the default batch 100, 500 images
    make 5 Adam steps a round, so 20 rounds are 100 steps at lr 1e-3, 40% of the original's 250
    (5 rounds over 5,000 images), where MNIST BadNets is already removed (about 35-50 steps)."""
    defense_size: int = Field(default=500, ge=10)
    """Clean test images held by the defender (NC, I-BAU); never used for the metrics."""


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
    methods: list[str] = Field(default_factory=lambda: list(DEFAULT_METHODS))
    hparams: dict[str, dict] = Field(default_factory=dict)
    """Per-method hyper-parameters, over ``DEFAULT_HPARAMS`` key by key."""
    conditions: list[str] = Field(default_factory=lambda: list(CONDITIONS[:4]))
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2])
    trigger: TriggerSpec = Field(default_factory=TriggerSpec)
    target: int = Field(default=0, ge=0)
    poisons_per_class: int = Field(default=3, ge=1)
    sources: list[int] | None = None
    label_mode: str = "dirty"
    contribution: float = 0.2
    request: int = Field(default=300, ge=1)
    strategy: str = "margin"
    strength_match: bool = True
    match_budget: float = Field(default=4.0, ge=1.0)
    """The strength-matched control may run this many times the attack's step budget to
    reach the attack's drop in forget accuracy (it stops as soon as it does)."""
    baseline_ratio: float = Field(default=0.1, gt=0, lt=1)
    """Share of the training set poisoned by the BadNets and Blended baselines."""
    defenses: DefenseSpec = Field(default_factory=DefenseSpec)
    device: str = "auto"

    @field_validator("seeds", "conditions", "methods", mode="before")
    @classmethod
    def _scalar_to_list(cls, v):
        return _listify(v)

    @field_validator("conditions")
    @classmethod
    def _known_conditions(cls, v: list[str]) -> list[str]:
        bad = [c for c in v if c not in CONDITIONS]
        if bad:
            raise ValueError(f"unknown condition {bad[0]!r}; use {', '.join(CONDITIONS)}")
        if "random-clean" in v and "attack" not in v:
            raise ValueError("random-clean is strength-matched to the attack's request: add "
                             "the attack condition too")
        return v

    @field_validator("strategy")
    @classmethod
    def _known_strategy(cls, v: str) -> str:
        if v not in STRATEGIES:
            raise ValueError(f"unknown request strategy {v!r}; use {', '.join(STRATEGIES)}")
        return v

    @field_validator("seeds", "conditions", "methods")
    @classmethod
    def _non_empty(cls, v):
        if not v:
            raise ValueError("must not be empty: the grid would have no cells")
        return v

    def method_hparams(self, method: str) -> dict:
        return {**DEFAULT_HPARAMS.get(method, {}), **self.hparams.get(method, {})}

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
