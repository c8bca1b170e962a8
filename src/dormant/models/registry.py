"""One registry of model builders, one factory: ``create_model(name, ...)``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import nn

from dormant import plugins
from dormant.errors import DormantError

Builder = Callable[["ModelSpec"], nn.Module]
_BUILDERS: dict[str, Builder] = {}
_PREFIXED: dict[str, Builder] = {}


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild an architecture; stored in every checkpoint sidecar."""

    name: str
    in_channels: int
    num_classes: int
    image_size: int

    def to_dict(self) -> dict:
        return asdict(self)


def register_model(name: str, *, prefix: bool = False) -> Callable[[Builder], Builder]:
    """Register ``fn(spec) -> nn.Module`` under ``name`` (or ``name:<arg>`` when ``prefix``)."""

    def deco(fn: Builder) -> Builder:
        plugins.claim("models", name, _PREFIXED if prefix else _BUILDERS, fn, fn.__module__)
        return fn

    return deco


def available_models() -> list[str]:
    plugins.load()
    return sorted(_BUILDERS) + [f"{p}:<name>" for p in sorted(_PREFIXED)]


def create_model(spec: ModelSpec, *, seed: int | None = None) -> nn.Module:
    """Build a fresh model; with ``seed`` its initialisation is reproducible."""
    plugins.load()
    head = spec.name.split(":", 1)[0]
    plugins.refuse_clash("models", head if ":" in spec.name else spec.name)
    builder = _PREFIXED.get(head) if ":" in spec.name else _BUILDERS.get(spec.name)
    if builder is None:
        raise DormantError(
            f"unknown model {spec.name!r}; choose one of: {', '.join(available_models())}"
        )
    if seed is None:
        return builder(spec)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return builder(spec)
