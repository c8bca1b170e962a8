"""Per-dataset defaults: a model, a recipe that trains to memorisation, the attack's budget
and the name of the unlearning methods' preset.

The seed paper trains CIFAR ResNets for 300 epochs so that the original model fits its
whole training set; there is nothing to unlearn or relearn in examples never learned. Small
sets get recipes measured here to reach >= 99% training fit in seconds; a study also stops
the original once it fits 99% (``fit_target``), so the recipe's steps are a cap.

Budgets keep the seed's proportions: unlearning runs 10x the attack's steps at the same base
learning rate (the seed: 100 epochs of unlearning and 10 of relearning, both at 1e-5), so an
unlearned model has moved further than the attack can move it back. The unlearning budgets
are the methods' presets of the profile's name (``StepHparams.presets`` in
``dormant.unlearn.base``, resolved by ``resolve_hparams``); no method value lives here.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from dormant.engine import Recipe


@dataclass(frozen=True)
class Profile:
    model: str
    forget: str
    train: Recipe
    preset: str
    """The unlearning methods' preset this profile's studies run (``dormant methods
    --preset``)."""
    attack_steps: int
    attack_lr: float
    eval_every: int
    test_every: int


def _epochs(n_train: int, epochs: float, batch: int = 128) -> int:
    return max(1, int(math.ceil(epochs * n_train / batch)))


def _digits(n: int) -> Profile:
    # class 1's atypical 30%: the oracle already gets class 0's odd zeros right (measured),
    # so class 0 shows no gap between the oracle and the original to relearn
    return Profile(
        model="mlp", forget="class:1:atypical:0.3",
        train=Recipe(steps=_epochs(n, 60), lr=1e-3, augment="none", final_lr=1e-5),
        preset="digits",
        attack_steps=150, attack_lr=1e-4, eval_every=5, test_every=25,
    )


def _grey28(n: int) -> Profile:
    return Profile(
        model="cnn-small", forget="class:0:atypical:0.1",
        train=Recipe(steps=_epochs(n, 30), lr=1e-3, augment="crop", pad=2, final_lr=1e-5),
        preset="grey28",
        attack_steps=_epochs(n, 2), attack_lr=1e-4, eval_every=10, test_every=100,
    )


def _cifar(n: int) -> Profile:
    """The seed paper's recipe: ResNet-18, Adam 1e-4, wd 1e-4, cosine to 0.1 lr, 300 epochs;
    unlearning 100 epochs at 1e-5 (preset ``cifar``); attack 10 epochs at 1e-5 -> 1e-6, eval
    every 10 steps."""
    return Profile(
        model="resnet18", forget="class:0:atypical:0.1",
        train=Recipe(steps=_epochs(n, 300), lr=1e-4, weight_decay=1e-4),
        preset="cifar",
        attack_steps=_epochs(n, 10), attack_lr=1e-5, eval_every=10, test_every=100,
    )


_PROFILES: dict[str, Callable[[int], Profile]] = {
    "digits": _digits,
    "mnist": _grey28,
    "fashion-mnist": _grey28,
}


def profile_for(dataset: str, n_train: int, image_shape: tuple[int, int, int]) -> Profile:
    """The named dataset's profile; unknown sources fall back by image shape."""
    make = _PROFILES.get(dataset.split(":", 1)[0].split("[", 1)[0])
    if make is None:
        c, h, _ = image_shape
        make = _digits if h <= 8 else _grey28 if c == 1 else _cifar
    return make(n_train)
