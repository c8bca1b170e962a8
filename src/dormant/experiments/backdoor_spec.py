"""The backdoor study's declarative spec, validated by pydantic (unknown keys are errors).

A study is methods x conditions x seeds. ``attack``, ``random-equal``, ``random-clean`` and
``unpoisoned`` run every method; ``carriers-first`` runs the exact methods only (``retrain``,
``sisa``); ``none``, ``badnets`` and ``blended`` involve no unlearning and run once per seed;
``dose`` runs once per seed and entry of ``doses``: the defenses' dose-matched positive
controls, plain backdoors of the study's own trigger at a few poison counts.

Two arms (``arm``): ``natural``, the clean request of Arazzi et al. (the attacker deletes
clean natural carriers of a mined trigger, its counterweights), and ``camouflage``, UBA-Inf's
design (the request is trigger-stamped images with true labels: *camouflage, not clean*), the
pipeline's positive control.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    model_validator,
)

from dormant.attacks import PoisonSpec, Trigger
from dormant.attacks.clean_unlearning import STRATEGIES, CleanUnlearningSpec
from dormant.defenses.registry import DefenseSpec
from dormant.experiments.spec import DataSpec, NonNegative
from dormant.settings import Axis, choice
from dormant.unlearn import PresetName, resolve_hparams

CONDITIONS = ("attack", "random-equal", "random-clean", "unpoisoned", "none", "badnets",
              "blended", "carriers-first", "dose")
PLAIN_CONDITIONS = ("none", "badnets", "blended", "dose")
"""The conditions that scan a trained model as it is, with no deletion."""
UNLEARNING_CONDITIONS = ("attack", "random-equal", "random-clean", "unpoisoned",
                         "carriers-first")
EXACT_METHODS = ("retrain", "sisa")
"""The methods ``carriers-first`` runs under: it asks whether the planted backdoor can wake at
all when a request holds every carrier it can and the deletion is exact."""
ARMS = ("natural", "camouflage")
ARM_LABELS = {"natural": "clean natural carriers", "camouflage": "camouflage, not clean"}
CONTROLS = ("random-equal", "random-clean")
"""The random clean requests: ``random-equal`` runs the attack's exact steps and
hyper-parameters, ``random-clean`` is strength-matched to the attack's drop."""
DEFAULT_METHODS = ["retrain", "bad_teacher", "fisher_forgetting", "boundary_shrink",
                   "boundary_expand", "gradient_ascent", "neggrad_plus"]


STUDY_TRIGGER = {"kind": "mined", "amplitude": 1.0, "size": 3, "carrier_rate": 0.01, "seed": 1}


def _over_study_trigger(v):
    return {**STUDY_TRIGGER, **v} if isinstance(v, dict) else v


def _matched(v: list[str]) -> list[str]:
    for control in CONTROLS:
        if control in v and "attack" not in v:
            raise ValueError(f"{control} is compared with the attack's request: add the "
                             "attack condition too")
    return v


Conditions = Annotated[Axis[choice("condition", *CONDITIONS)], AfterValidator(_matched)]
Strategy = choice("request strategy", *STRATEGIES)


class BackdoorSpec(DataSpec):
    dataset: str = "mnist"
    train_size: int | None = Field(default=10_000, gt=0)
    test_size: int | None = Field(default=2_000, gt=0)
    methods: Axis[str] = Field(default_factory=lambda: list(DEFAULT_METHODS))
    hparams: dict[str, dict] = Field(default_factory=dict)
    """Per-method hyper-parameters, over the preset's values key by key."""
    preset: PresetName = None
    """The methods' preset (``dormant methods --preset``); None: ``backdoor``, the budgets
    picked for this study on a CPU (methods without one run their class defaults)."""
    conditions: Conditions = Field(default_factory=lambda: [*CONDITIONS[:5], "carriers-first"])
    arm: Literal["natural", "camouflage"] = "natural"
    """What the request deletes (module docstring); ``camouflage`` needs a trigger no natural
    image carries (e.g. ``patch``)."""
    camouflage: float = Field(default=2.0, gt=0, le=2)
    """``camouflage`` arm: camouflage images per poison, at most 2 (UBA-Inf runs poison :
    camouflage from 1 : 2 to 10 : 1, so 0.1 to 2 per poison; 2 held a 108-poison patch
    backdoor lowest on the choice seeds 0-2)."""
    camouflage_eps: float = Field(default=0.0, ge=0, le=16 / 255)
    """The camouflage's influence-guided perturbation budget, an L-infinity share of the grey
    range (UBA-Inf: 2/255); 0 stamps the trigger alone. On MNIST 2/255 and 4/255 moved the
    dormant ASR by under 2 points on choice seed 0, so the default is off."""
    armed_asr: float = Field(default=80.0, gt=0, le=100)
    """The *poisons only* ceiling a seed needs to count as armed: below it the report says
    "unarmed", never "not woken"."""
    min_purity: float = Field(default=0.8, ge=0, le=1)
    """The trigger's label purity a request that deletes every counterweight must leave
    (``Purity``); a configuration below it is refused before training."""
    seeds: Axis[NonNegative] = Field(default_factory=lambda: [0, 1, 2])
    trigger: Annotated[Trigger, BeforeValidator(_over_study_trigger)] = Field(
        default_factory=lambda: Trigger(**STUDY_TRIGGER))
    """A 3x3 block of ink mined where about 1% of the attacker's clean non-target images
    carry it naturally (``dormant.attacks.natural``): the one kind with counterweights. A
    mapping that sets some keys keeps the others of this default."""
    target: int = Field(default=0, ge=0)
    poisons_per_class: int = Field(default=3, ge=1)
    sources: list[int] | None = None
    label_mode: str = "dirty"
    contribution: float = 0.2
    request: int = Field(default=300, ge=1)
    strategy: Strategy = "simulate"
    threat: Literal["attacker", "full"] = "attacker"
    """What the attacker's surrogate trains on: its contribution and the public sample, or
    (``full``, an ablation) the victim's whole training set (docs/threat-model.md)."""
    public: int = Field(default=20_000, ge=0)
    """Public images of the same distribution, outside the victim's training set, that the
    attacker holds; a quarter of them (at most 500) are its held-out evaluation set."""
    poison_choice: Literal["random", "influence"] = "influence"
    surrogate_public: int = Field(default=2000, ge=0)
    """Public images the surrogate trains on beside the contribution
    (``CleanUnlearningSpec.surrogate_public``)."""
    counterweights: int = Field(default=200, ge=0)
    """Natural carriers of the mined trigger that the attacker brings from its public sample
    into its contribution (``CleanUnlearningSpec.counterweights``)."""
    retrain_seeds: int = Field(default=5, ge=1)
    """Training seeds ``retrain`` runs each request under, so that retraining's own noise
    (+-8 ASR points measured on MNIST) is told apart from the request's effect."""
    strength_match: bool = True
    match_budget: float = Field(default=4.0, ge=1.0)
    """The strength-matched control may run this many times the attack's step budget to
    reach the attack's drop in forget accuracy (it stops as soon as it does)."""
    doses: list[Annotated[int, Field(ge=0)]] = Field(default_factory=list)
    """Condition ``dose``: the poisons, in all, of plain backdoors (the study's own trigger
    stamped on non-target images spread over their classes, labelled the target, nothing to
    hold them down) trained beside the victim, so that each defense is tried at the
    strengths the attack's backdoor reaches, not only at BadNets' 10% (the report names the
    weakest each defense caught). Dose 0, the clean model trained on the plain set, is
    trained whenever ``dose`` runs (it is the doses' ASR floor) and scanned when listed: the
    negative control a defense must not catch."""
    baseline_ratio: float = Field(default=0.1, gt=0, lt=1)
    """Share of the training set poisoned by the BadNets and Blended baselines."""
    defenses: DefenseSpec = Field(default_factory=DefenseSpec)

    @model_validator(mode="after")
    def _doses_named(self):
        if "dose" in self.conditions and not self.doses:
            raise ValueError("condition dose scans the backdoors listed in doses: set doses "
                             "(poisons in all, e.g. [9, 18, 27])")
        return self

    def method_hparams(self, method: str, n_train: int | None = None) -> dict:
        """``resolve_hparams`` under ``preset`` (None: ``backdoor``) with ``hparams[method]``
        on top; a preset in epochs counts ``n_train`` images (default ``train_size``)."""
        return resolve_hparams(method, self.preset or "backdoor", self.hparams.get(method, {}),
                               n_train=n_train or self.train_size)

    def attack(self) -> CleanUnlearningSpec:
        """The clean-unlearning attack; bad values raise ``DormantError`` naming them."""
        sources = tuple(self.sources) if self.sources is not None else None
        return CleanUnlearningSpec(
            PoisonSpec(self.target, self.trigger, self.poisons_per_class, sources,
                       self.label_mode),
            self.contribution, self.request, self.strategy, self.threat, self.public,
            self.poison_choice, self.surrogate_public,
            self.counterweights if self.arm == "natural" else 0)


def baseline_triggers() -> dict[str, Trigger]:
    """BadNets' 3x3 patch (Gu et al. 2017) and Blended at BackdoorBench's alpha 0.2 (Chen et
    al. 2017 blend a fixed image; a seeded noise image here)."""
    return {"badnets": Trigger("patch", 1.0, 3), "blended": Trigger("blend", 0.2, seed=2)}
