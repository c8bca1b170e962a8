"""What every unlearning method receives, the shared hyper-parameters, and the registry.

A method is ``fn(model, data, hp, ctx) -> nn.Module``: it trains ``model`` in place (the
caller passes a copy) through the engine and returns it. It never reads files or prints.

Hyper-parameters are frozen pydantic dataclasses (``@hyperparameters``) validated declaratively
(``Annotated[float, Field(gt=0)]``, ``Literal[...]``); an unknown key is an error. A method's
*presets* are named sets of values on its registry entry: ``paper`` (the class defaults, for
every method), the step budgets shared by every step-based method (``StepHparams.presets``:
one per dataset profile) and the method's own (``register_method(..., presets=...)``).
``resolve_hparams`` is the one resolver every command and the Python API go through.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

import pydantic.dataclasses
from pydantic import AfterValidator, ConfigDict, Field

from dormant import plugins
from dormant.engine.recipe import Recipe
from dormant.errors import DormantError
from dormant.settings import validate

if TYPE_CHECKING:  # torch loads when a method runs: listing methods and their settings needs
    import torch  # none of it (``dormant methods`` starts without it)
    from torch import nn

    from dormant.engine import Hook, Progress

_frozen_forbid = pydantic.dataclasses.dataclass(
    frozen=True, config=ConfigDict(extra="forbid", allow_inf_nan=False))


def hyperparameters(cls: type) -> type:
    """The decorator of every method's hyper-parameters: a frozen pydantic dataclass whose
    unknown keys are errors; ``dataclasses.fields/asdict/replace`` work on it, and ``replace``
    validates again. Names in string annotations resolve in the defining scope too (a class
    defined in a function or in ``exec``'d code), not only in its module."""
    out = _frozen_forbid(cls)
    if not out.__pydantic_complete__:
        caller = sys._getframe(1)
        pydantic.dataclasses.rebuild_dataclass(
            out, _types_namespace={**caller.f_globals, **caller.f_locals})
    return out

Positive = Annotated[float, Field(gt=0)]
PositiveInt = Annotated[int, Field(gt=0)]
NonNegative = Annotated[float, Field(ge=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]


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
    4 values, as the verdict issue asks, because each one costs a full-budget run (a grid
    that does not bracket the oracle grows by up to the protocol's ``max_extensions``).
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
class Preset:
    """A named set of hyper-parameter values, over the method's class defaults.

    ``epochs`` gives the step budget in passes over the training set instead of ``steps``:
    the resolver sets steps = max(1, ceil(epochs * n_train / batch_size)) at the batch size
    the run uses, so it needs the training set's size. ``doc`` says where the values come
    from."""

    values: Mapping[str, Any] = field(default_factory=dict)
    epochs: float | None = None
    doc: str = ""

    def __post_init__(self) -> None:
        if self.epochs is not None and (self.epochs <= 0 or "steps" in self.values):
            raise ValueError("a preset gives steps or a positive epochs, not both")

    def over(self, base: Preset) -> Preset:
        """This preset's values over ``base``'s, key by key (its steps replace epochs)."""
        epochs = self.epochs if self.epochs is not None or "steps" in self.values \
            else base.epochs
        return Preset({**base.values, **self.values}, epochs, self.doc or base.doc)


BACKDOOR_DOC = (
    "the backdoor study's budget (also ``dormant forget``'s), picked by the victim's own "
    "utility bar on MNIST seed 9, a seed the study does not report (10,000 images, "
    "cnn-small, the attacker's mined trigger planted): Adam lr 1e-4, the most steps of "
    "3, 5, 8, 10, 15, 20, 30, 40, 60 whose random clean request of 200 images costs at most "
    "3 points of clean accuracy (boundary_shrink 10: 2.0, boundary_expand 20: 2.05, "
    "gradient_ascent 10: 2.95; neggrad_plus keeps 50: 0.3 at 60); the class defaults (39,100 "
    "steps at 1e-5) are sized for CIFAR ResNets on a GPU")
"""Where the ``backdoor`` presets' step budgets come from (each method's own file holds them)."""

PAPER = "paper"
"""The preset every method has: its class defaults, the seed paper's values."""


@hyperparameters
class StepHparams:
    """Budget shared by step-based methods. Defaults follow the seed paper's unlearning
    (Siddiqui et al. 2025): a fresh Adam, lr 1e-5, wd 0, no schedule, batch 128, 39,100 steps
    (100 x the CIFAR-10 train loader)."""

    steps: PositiveInt = 39_100
    lr: Positive = 1e-5
    weight_decay: NonNegative = 0.0
    batch_size: PositiveInt = 128
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"

    # the learning rate sets how far a fixed step budget moves the weights
    strength: ClassVar[Strength | None] = Strength("lr")

    # Budgets per dataset profile (``dormant.experiments.profiles``), shared by every
    # step-based method. They keep the seed's proportions: unlearning runs 10x the attack's
    # steps at the same base learning rate (the seed: 100 epochs of unlearning and 10 of
    # relearning, both at 1e-5), so an unlearned model has moved further than the attack can
    # move it back.
    presets: ClassVar[dict[str, Preset]] = {
        "digits": Preset({"steps": 1500, "lr": 1e-4}, doc=(
            "sklearn digits (mlp): 1,500 Adam steps at 1e-4, 10x the profile's 150-step "
            "attack at the same rate (the seed's proportion of 100 to 10 epochs)")),
        "grey28": Preset({"lr": 1e-4}, epochs=20, doc=(
            "MNIST and Fashion-MNIST (cnn-small): 20 epochs at batch 128, Adam 1e-4, 10x the "
            "profile's 2-epoch attack at the same rate (the seed's proportion)")),
        "cifar": Preset({"lr": 1e-5}, epochs=100, doc=(
            "the seed paper's unlearning on CIFAR (ResNet-18): 100 epochs at 1e-5, 10x its "
            "10-epoch attack (Siddiqui et al. 2025)")),
    }

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


@hyperparameters
class StoppableHparams(StepHparams):
    """``stop_acc``: stop once accuracy on the monitor ids (never the held-out split) falls to
    this percentage or below, e.g. the oracle's. ``None`` runs the whole budget."""

    stop_acc: float | None = None


def noise_generator(seed: int) -> torch.Generator:
    """A generator for weight noise and masks that is not the initialisation's stream:
    ``create_model(seed=s)`` draws from a generator seeded with s, and Gaussian noise from a
    fresh generator seeded with the same s correlates with those initial weights (measured:
    -0.35 on the MLP), which survive training. The noise seed is derived from s instead."""
    import torch

    parent = torch.Generator().manual_seed(seed)
    return torch.Generator().manual_seed(int(torch.randint(2**62, (1,), generator=parent)))


def subsample(ids: torch.Tensor, cap: int | None, g: torch.Generator) -> torch.Tensor:
    """At most ``cap`` of ``ids`` (a seeded pick, order kept); ``None`` keeps them all."""
    import torch

    if cap is None or cap >= len(ids):
        return ids
    keep = torch.randperm(len(ids), generator=g)[:cap].sort().values
    return ids[keep.to(ids.device)]


def stop_when_forgotten(data: UnlearnData, hp: StoppableHparams) -> Hook | None:
    from dormant.engine import evaluate

    if hp.stop_acc is None or len(data.monitor) == 0:
        return None
    return lambda _step, model: evaluate(model, data.x, data.y, data.monitor).acc <= hp.stop_acc


Method = Callable[["nn.Module", UnlearnData, object, UnlearnContext], "nn.Module"]


@dataclass(frozen=True)
class MethodInfo:
    name: str
    fn: Method
    hparams: type
    summary: str
    presets: Mapping[str, Preset] = field(default_factory=dict)
    """Every preset this method has, ``paper`` included: the ones its hyper-parameter class
    inherits (``presets`` class attributes along its bases, e.g. ``StepHparams.presets``),
    each refined key by key by the method's own from ``register_method``."""

    def defaults(self) -> dict:
        return dataclasses.asdict(self.hparams())

    @property
    def strength(self) -> Strength | None:
        """The declared strength hyper-parameter, or None for a method with no knob."""
        return getattr(self.hparams, "strength", None)

    @property
    def safeguarded(self) -> bool:
        """The reference runs the method after an initial safeguard (another method's model,
        ``then:``): a standalone row is not the reference's configuration."""
        return getattr(self.hparams, "safeguarded", False)


_METHODS: dict[str, MethodInfo] = {}


def _class_presets(cls: type) -> dict[str, Preset]:
    out: dict[str, Preset] = {}
    for klass in reversed(cls.__mro__):
        for name, p in vars(klass).get("presets", {}).items():
            out[name] = p.over(out[name]) if name in out else p
    return out


def register_method(name: str, hparams: type, presets: Mapping[str, Preset] | None = None
                    ) -> Callable[[Method], Method]:
    """Register ``fn`` as method ``name`` with its hyper-parameter class and its own presets
    (each over the class's inherited preset of the same name, key by key)."""
    merged = {PAPER: Preset(doc="the method's own class defaults (the seed paper's budget: "
                                "39,100 Adam steps at lr 1e-5 where it trains)"),
              **_class_presets(hparams)}
    for pname, p in (presets or {}).items():
        if pname == PAPER:
            raise DormantError(f"method {name!r}: preset {PAPER!r} is the class defaults; "
                               "change the defaults instead")
        merged[pname] = p.over(merged[pname]) if pname in merged else p
    fields = {f.name for f in dataclasses.fields(hparams)}
    for pname, p in merged.items():  # a typo in a preset fails at import, not mid-study
        sets = set(p.values) | ({"steps", "batch_size"} if p.epochs is not None else set())
        if sets - fields:
            raise DormantError(f"method {name!r}: preset {pname!r} sets "
                               f"{sorted(sets - fields)[0]!r}, which is no hyper-parameter "
                               "of it")

    def deco(fn: Method) -> Method:
        doc = (hparams.__doc__ or "").strip().split("\n\n")[0]
        plugins.claim("methods", name, _METHODS,
                      MethodInfo(name, fn, hparams, " ".join(doc.split()), merged), fn.__module__)
        return fn

    return deco


def available_methods() -> list[str]:
    plugins.load()
    return sorted(_METHODS)


def get_method(name: str) -> MethodInfo:
    plugins.load()
    plugins.refuse_clash("methods", name)
    if name not in _METHODS:
        raise DormantError(
            f"unknown method {name!r}; choose one of: {', '.join(available_methods())}"
        )
    return _METHODS[name]


def available_presets() -> list[str]:
    """Every preset name some registered method has (``paper`` is every method's)."""
    plugins.load()
    return sorted({p for info in _METHODS.values() for p in info.presets} | {PAPER})


def get_preset(method: str, preset: str | None = None) -> Preset:
    """``method``'s preset ``preset`` (None: ``paper``). A name no method knows is an error
    listing the known ones; a known name that ``method`` has no values for is its class
    defaults (an empty preset), as ``dormant methods --preset`` shows."""
    info = get_method(method)
    name = PAPER if preset is None else preset
    if name not in available_presets():
        raise DormantError(f"unknown preset {name!r}; choose one of: "
                           f"{', '.join(available_presets())}")
    return info.presets.get(name, Preset())


def _known_preset(name: str | None) -> str | None:
    if name is not None and name not in available_presets():
        raise ValueError(f"unknown preset {name!r}; choose one of: "
                         f"{', '.join(available_presets())}")
    return name


PresetName = Annotated[str | None, AfterValidator(_known_preset)]
"""A spec's ``preset`` key: a preset some registered method has, or None (the command's
default)."""


def resolve_hparams(method: str, preset: str | None = None, overrides: Mapping | None = None,
                    *, n_train: int | None = None) -> dict:
    """The one resolver: ``method``'s hyper-parameter values under ``preset`` (None:
    ``paper``, the class defaults) with ``overrides`` on top, checked.

    Returns only the keys the preset and the overrides set (a preset in epochs becomes
    ``steps``, at the batch size the run uses; that needs ``n_train``, the training set's
    size); the class defaults fill in the rest: ``make_hparams(method, d)`` is the full,
    validated object. Studies key their caches and rows on this dict, so a preset that sets
    nothing leaves them as they were. Bad names or values raise one ``DormantError`` line.
    """
    p = get_preset(method, preset)
    over = dict(overrides or {})
    values = {**p.values}
    if p.epochs is not None and "steps" not in over:
        if n_train is None:
            raise DormantError(f"method {method!r}: preset {preset!r} gives its budget in "
                               "epochs of the training set, so it needs the set's size")
        batch = make_hparams(method, {**values, **over}).batch_size
        values = {"steps": max(1, math.ceil(p.epochs * n_train / batch)), **values}
    values.update(over)
    make_hparams(method, values)
    return values


@functools.cache
def _dormant_imports(module: str) -> frozenset[str]:
    """The dormant modules ``module``'s file imports, at the top or inside functions
    (parsed once a process: what a file imports does not change while it runs; its bytes,
    which the revision hashes, are read afresh)."""
    import ast
    import importlib.util

    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return frozenset()
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return frozenset()
    with open(spec.origin, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        else:
            continue
        out |= {n for n in names if n.split(".")[0] == "dormant" and _is_module(n)}
    return frozenset(out)


@functools.cache
def _is_module(name: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # ``module.attribute``, not a module
        return False


def _source_of(module: str) -> bytes:
    import importlib.util

    spec = importlib.util.find_spec(module)
    with open(spec.origin, "rb") as f:
        return f.read()


def method_revision(name: str) -> str:
    """The code a method's artefacts come from: the package version and the sha256 of the
    source of every module that defines it (its function's and its settings class's, bases
    included) and of every dormant module those import, transitively (shared helpers such as
    ``perturb``, the training loop in ``engine``, the models). A fixed bug or a changed
    default in any of them gives a new revision. Modules are hashed by name, in name order,
    so the revision is the same on every machine with the same code."""
    import hashlib

    from dormant import __version__

    h = hashlib.sha256(__version__.encode())
    for module in method_modules(name):
        h.update(module.encode() + b"\0" + _source_of(module))
    return h.hexdigest()[:16]


def method_modules(name: str) -> list[str]:
    """The modules :func:`method_revision` hashes, in name order: the method's function's
    and settings classes', and every dormant module those import, transitively (a lazy
    package's names count by the ``TYPE_CHECKING`` imports that say where they live)."""
    info = get_method(name)
    roots = {info.fn.__module__} | {c.__module__ for c in info.hparams.__mro__
                                    if c is not object and c.__module__ != "builtins"}
    seen: set[str] = set()
    todo = sorted(roots)
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        todo += sorted(_dormant_imports(module) - seen)
    return sorted(m for m in seen if _is_module(m))


def method_provenance(name: str, values: Mapping | None = None) -> dict:
    """What a cache key must hash for an artefact of ``name`` run with ``values``: every
    hyper-parameter it runs with, class defaults included (``values`` alone would miss a
    changed default), and the code revision (:func:`method_revision`)."""
    return {"resolved": dataclasses.asdict(make_hparams(name, values)),
            "code": method_revision(name)}


def make_hparams(name: str, overrides: Mapping | None = None):
    """The method's hyper-parameters from its class defaults with ``overrides`` (no preset:
    see ``resolve_hparams``), validated; an error names the method and the key."""
    info = get_method(name)
    fields = {f.name for f in dataclasses.fields(info.hparams)}
    unknown = sorted(set(overrides or {}) - fields)
    if unknown:
        raise DormantError(
            f"method {name!r} has no hyper-parameter {unknown[0]!r}; it has: "
            f"{', '.join(sorted(fields)) or 'none'}"
        )
    # pydantic checks each value against the annotations and constraints (YAML lists become
    # tuples, ints floats); a plain dataclass would accept lr="fast" and fail mid-study
    where = f"method {name!r}"
    return validate(info.hparams, dict(overrides or {}), where,
                    {f: f"{where}: hyper-parameter {f!r}" for f in fields})


def unlearn(
    name: str, model: nn.Module, data: UnlearnData, ctx: UnlearnContext, *,
    preset: str | None = None, **overrides
) -> nn.Module:
    """Apply method ``name`` to a copy of ``model``; the input model is left untouched.
    Hyper-parameters: ``preset`` (None: ``paper``, the class defaults; an epoch budget counts
    ``data.y`` as the training set), then ``overrides``, through ``resolve_hparams``."""
    info = get_method(name)
    hp = make_hparams(name, resolve_hparams(name, preset, overrides, n_train=len(data.y)))
    if ctx.pretrained is None:
        ctx = dataclasses.replace(ctx, pretrained=model)
    return info.fn(copy.deepcopy(model), data, hp, ctx)
