"""Per-sample detectors: each scores training images for being poisoned and flags some, by
its paper's own rule. ``dormant inspect`` runs them on a seeded random sample of a model's
training set and ranks the contributors of the data manifest by their flagged share.

A detector is one file: a frozen settings class whose defaults are its paper's, and one
``@register_detector`` on ``fn(cfg, model, x, y, reference, seed) -> Detection``. ``x``, ``y``
are the sampled training images (uint8) with their training labels; ``reference`` holds
clean held-out images (the test set's) that a detector may calibrate on, never flag.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from pydantic import BaseModel

from dormant.errors import DormantError


@dataclass(frozen=True)
class Detection:
    scores: torch.Tensor  # (n,) higher: more suspect
    flags: torch.Tensor  # (n,) bool


@dataclass(frozen=True)
class DetectorInfo:
    name: str
    config: type[BaseModel]
    run: Callable[..., Detection]
    label: str
    rule: str

    def __call__(self, model, x, y, reference, *, seed: int = 0,
                 cfg: BaseModel | None = None) -> Detection:
        out = self.run(cfg or self.config(), model, x, y, reference, seed)
        if out.flags.shape != (len(y),) or out.scores.shape != (len(y),):
            raise DormantError(f"detector {self.name!r} returned {tuple(out.flags.shape)} "
                               f"flags for {len(y)} images")
        return out


_DETECTORS: dict[str, DetectorInfo] = {}


def register_detector(name: str, config: type[BaseModel], *, label: str, rule: str
                      ) -> Callable[[Callable], Callable]:
    """Decorator: register ``fn(cfg, model, x, y, reference, seed) -> Detection`` as
    detector ``name``; ``rule`` says in words when it flags an image."""

    def deco(fn: Callable) -> Callable:
        _DETECTORS[name] = DetectorInfo(name, config, fn, label, rule)
        return fn

    return deco


def available_detectors() -> list[str]:
    return list(_DETECTORS)


def get_detector(name: str) -> DetectorInfo:
    if name not in _DETECTORS:
        raise DormantError(f"unknown detector {name!r}; choose one of: "
                           f"{', '.join(available_detectors())}")
    return _DETECTORS[name]
