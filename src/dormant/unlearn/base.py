"""What every unlearning method receives, the shared hyper-parameters, and the registry.

A method is ``fn(model, data, hp, ctx) -> nn.Module``: it trains ``model`` in place (the
caller passes a copy) through the engine and returns it. It never reads files or prints.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from pydantic import TypeAdapter, ValidationError
from torch import nn

from dormant.engine import Hook, Progress, Recipe, evaluate
from dormant.errors import DormantError


@dataclass(frozen=True)
class UnlearnData:
    """Device tensors a method may use. The held-out forget split is deliberately not named:
    methods train on all of ``forget`` but may *evaluate* only ``monitor`` (the leakable part),
    so no stopping rule can peek at the split every forget accuracy is measured on."""

    x: torch.Tensor
    y: torch.Tensor
    forget: torch.Tensor
    retain: torch.Tensor
    monitor: torch.Tensor
    num_classes: int


@dataclass(frozen=True)
class UnlearnContext:
    recipe: Recipe
    """The original model's training recipe: the oracle reuses it, others its augmentation."""
    init: Callable[..., nn.Module]
    """``init()``: a fresh model with the original model's initialisation; ``init(seed)``: an
    independent one from another seed (Bad Teacher's incompetent teacher)."""
    seed: int = 0
    progress: Progress | None = None
    pretrained: nn.Module | None = None
    """theta_pre, the model before any unlearning: teachers, anchors and LMC endpoints use it.
    It differs from the model handed to a method when that method is chained (``then:``)
    after another. ``unlearn`` fills it in; methods must not modify it."""


@dataclass(frozen=True)
class Strength:
    """A method's declared strength hyper-parameter: the one knob ``calibrate: oracle`` turns.

    ``factors`` multiply the value the study resolved for ``param`` (the profile's budget,
    then the user's override), so one grid means the same on any model and profile; at most
    4 values, as the verdict issue asks, because each one costs a full-budget run.
    ``target`` is what calibration matches to the retrain oracle, on the leakable forget ids
    only (never the held-out split):

    - ``"leakable"``: the value whose accuracy on the leakable ids is closest to the oracle's;
    - ``"distance"``: the smallest value whose L2 distance from theta_pre reaches the
      oracle's, the seed paper's own predictor of resistance (for the remedies, whose job is
      to move the weights, not to lower forget accuracy directly).
    """

    param: str
    factors: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)
    target: Literal["leakable", "distance"] = "leakable"
    weaker: Literal["lower", "higher"] = "lower"
    """Which way the knob weakens the method: near-ties in calibration go to the weaker
    value (SSD's selection threshold and attenuation's factor weaken as they grow)."""

    def __post_init__(self) -> None:
        if not 1 <= len(self.factors) <= 4 or any(f <= 0 for f in self.factors):
            raise ValueError(f"strength {self.param}: 1 to 4 positive factors, got "
                             f"{self.factors}")


@dataclass(frozen=True)
class StepHparams:
    """Budget shared by step-based methods. Defaults follow the seed paper's unlearning
    (Siddiqui et al. 2025): a fresh Adam, lr 1e-5, wd 0, no schedule, batch 128, 39,100 steps
    (100 x the CIFAR-10 train loader)."""

    steps: int = 39_100
    lr: float = 1e-5
    weight_decay: float = 0.0
    batch_size: int = 128
    optimizer: str = "adam"

    # the learning rate sets how far a fixed step budget moves the weights
    strength: ClassVar[Strength | None] = Strength("lr")

    def recipe(self, base: Recipe) -> Recipe:
        return Recipe(
            steps=self.steps,
            lr=self.lr,
            optimizer=self.optimizer,
            weight_decay=self.weight_decay,
            batch_size=self.batch_size,
            schedule="constant",
            augment=base.augment,
            pad=base.pad,
        )


@dataclass(frozen=True)
class StoppableHparams(StepHparams):
    """``stop_acc``: stop once accuracy on the monitor ids (never the held-out split) falls to
    this percentage or below, e.g. the oracle's. ``None`` runs the whole budget."""

    stop_acc: float | None = None


def noise_generator(seed: int) -> torch.Generator:
    """A generator for weight noise and masks that is not the initialisation's stream:
    ``create_model(seed=s)`` draws from a generator seeded with s, and Gaussian noise from a
    fresh generator seeded with the same s correlates with those initial weights (measured:
    -0.35 on the MLP), which survive training. The noise seed is derived from s instead."""
    parent = torch.Generator().manual_seed(seed)
    return torch.Generator().manual_seed(int(torch.randint(2**62, (1,), generator=parent)))


def subsample(ids: torch.Tensor, cap: int | None, g: torch.Generator) -> torch.Tensor:
    """At most ``cap`` of ``ids`` (a seeded pick, order kept); ``None`` keeps them all."""
    if cap is None or cap >= len(ids):
        return ids
    keep = torch.randperm(len(ids), generator=g)[:cap].sort().values
    return ids[keep.to(ids.device)]


def stop_when_forgotten(data: UnlearnData, hp: StoppableHparams) -> Hook | None:
    if hp.stop_acc is None or len(data.monitor) == 0:
        return None
    return lambda _step, model: evaluate(model, data.x, data.y, data.monitor).acc <= hp.stop_acc


Method = Callable[[nn.Module, UnlearnData, object, UnlearnContext], nn.Module]


@dataclass(frozen=True)
class MethodInfo:
    name: str
    fn: Method
    hparams: type
    summary: str

    def defaults(self) -> dict:
        return dataclasses.asdict(self.hparams())

    @property
    def strength(self) -> Strength | None:
        """The declared strength hyper-parameter, or None for a method with no knob."""
        return getattr(self.hparams, "strength", None)


_METHODS: dict[str, MethodInfo] = {}


def register_method(name: str, hparams: type) -> Callable[[Method], Method]:
    def deco(fn: Method) -> Method:
        doc = (hparams.__doc__ or "").strip().split("\n\n")[0]
        _METHODS[name] = MethodInfo(name, fn, hparams, " ".join(doc.split()))
        return fn

    return deco


def available_methods() -> list[str]:
    return sorted(_METHODS)


def get_method(name: str) -> MethodInfo:
    if name not in _METHODS:
        raise DormantError(
            f"unknown method {name!r}; choose one of: {', '.join(available_methods())}"
        )
    return _METHODS[name]


def make_hparams(name: str, overrides: dict | None = None):
    """The method's hyper-parameters with ``overrides``; unknown keys are named in the error."""
    info = get_method(name)
    fields = {f.name for f in dataclasses.fields(info.hparams)}
    unknown = sorted(set(overrides or {}) - fields)
    if unknown:
        raise DormantError(
            f"method {name!r} has no hyper-parameter {unknown[0]!r}; it has: "
            f"{', '.join(sorted(fields))}"
        )
    try:
        # pydantic checks each value against the dataclass's annotations (YAML lists become
        # tuples, ints floats); a plain dataclass would accept lr="fast" and fail mid-study
        hp = TypeAdapter(info.hparams).validate_python(dict(overrides or {}))
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        raise DormantError(f"method {name!r}: hyper-parameter {key!r}: {err['msg']}") from None
    if isinstance(hp, StepHparams) and hp.steps <= 0:
        raise DormantError(f"method {name!r}: steps must be positive, got {hp.steps}")
    return hp


def unlearn(
    name: str, model: nn.Module, data: UnlearnData, ctx: UnlearnContext, **overrides
) -> nn.Module:
    """Apply method ``name`` to a copy of ``model``; the input model is left untouched."""
    info = get_method(name)
    hp = make_hparams(name, overrides)
    if ctx.pretrained is None:
        ctx = dataclasses.replace(ctx, pretrained=model)
    return info.fn(copy.deepcopy(model), data, hp, ctx)
