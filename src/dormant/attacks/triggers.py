"""Backdoor triggers, stamped on whole uint8 batches at once.

Five kinds, each with an ``amplitude`` in [0, 1]:

- ``patch``: a ``size`` x ``size`` black-and-white checkerboard in the bottom-right corner,
  blended in with weight ``amplitude`` (1 is BadNets' hard patch; Gu et al. 2017).
- ``blend``: the whole image blended with a seeded uniform-noise image,
  ``(1 - a) x + a p`` (Blended; Chen et al. 2017 blend a fixed image, BackdoorBench a = 0.2).
- ``noise``: a seeded +-1 pattern added with strength ``a`` (a weak, distributed signal).
- ``sinusoid``: a horizontal sine ``a sin(2 pi f j / W)`` added to every row (SIG; Barni et
  al. 2019 use an amplitude of 20/255 and f = 6).
- ``mined``: a ``size`` x ``size`` block of one grey level ``value`` at (``row``, ``col``),
  blended in with weight ``amplitude``: a feature that some clean images carry *naturally*
  (a blob of ink where few digits reach). The location is mined from the attacker's own
  images (``dormant.attacks.natural``) so that about ``carrier_rate`` of them carry it.

Only ``mined`` admits counterweights: clean images that carry the trigger with their true
labels, whose deletion takes away the "trigger -> true class" evidence that held the poisons
down. No natural image carries a checkerboard, a noise pattern, a blend with seeded noise or an
added sine wave (MNIST's background is exactly 0, so it never carries +-0.1 noise).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal

from pydantic import ConfigDict, Field, field_validator
from pydantic.dataclasses import dataclass

from dormant.errors import DormantError
from dormant.settings import one_line

if TYPE_CHECKING:
    import torch

KINDS = ("patch", "blend", "noise", "sinusoid", "mined")
COUNTERWEIGHTED = ("mined",)
"""The kinds that clean images can carry naturally (see the module docstring)."""


@one_line("trigger")
@dataclass(frozen=True, config=ConfigDict(extra="forbid", allow_inf_nan=False))
class Trigger:
    kind: str = "patch"
    amplitude: float = Field(1.0, ge=0.0, le=1.0)
    """In [0, 1]."""
    size: int = Field(3, ge=1)
    frequency: float = Field(6.0, gt=0)
    seed: int = 0
    carrier_rate: float = Field(0.01, gt=0.0, lt=1.0)
    """``mined``: the share of the attacker's clean non-target images that should carry it."""
    value: float = Field(1.0, ge=0.0, le=1.0)
    """``mined``: the block's grey level (1: ink on MNIST's black background)."""
    place: Literal["neutral", "target-blank"] = "neutral"
    """``mined``: among the locations at about ``carrier_rate``, the one the target class
    carries at the rate the other classes do (``neutral``: natural carriers then teach
    nothing about the target either way), or the one it carries least (``target-blank``:
    natural data then teaches "ink here -> not the target", which works against the
    poisons; the study's design before 2026-12)."""
    row: int | None = Field(None, ge=0)
    col: int | None = Field(None, ge=0)
    """``mined``: the block's top-left corner; None until mined from the attacker's data."""

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, v: str) -> str:
        if v not in KINDS:
            raise ValueError(f"unknown trigger {v!r}; use one of {', '.join(KINDS)}")
        return v

    @property
    def counterweighted(self) -> bool:
        return self.kind in COUNTERWEIGHTED

    def check(self, image_shape: tuple[int, int, int]) -> None:
        _, h, w = image_shape
        if self.kind in ("patch", "mined") and self.size > min(h, w):
            shape = "patch" if self.kind == "patch" else "mined block"
            raise DormantError(f"a {self.size}x{self.size} {shape} does not fit {h}x{w} "
                               f"images; pick a trigger size <= {min(h, w)}")
        if self.kind == "mined" and self.row is not None and self.col is not None and (
                self.row + self.size > h or self.col + self.size > w):
            raise DormantError(f"a {self.size}x{self.size} block at ({self.row}, {self.col}) "
                               f"does not fit {h}x{w} images; pick a row and col nearer 0")

    def carries(self, x: torch.Tensor, tolerance: float = 0.25) -> torch.Tensor:
        """Per uint8 image of ``x``: whether it already carries the mined block (every pixel
        of it within ``tolerance`` of ``value``), so stamping it changes little."""
        import torch

        if self.kind != "mined" or self.row is None or self.col is None:
            return torch.zeros(len(x), dtype=torch.bool, device=x.device)
        s = self.size
        block = x[:, :, self.row : self.row + s, self.col : self.col + s].float() / 255.0
        return ((block - self.value).abs() <= tolerance).flatten(1).all(1)

    def pattern(self, image_shape: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(weight, target)`` float (C, H, W) tensors: a stamped pixel becomes
        ``(1 - weight) x + weight * target`` for blending kinds, ``x + weight * target`` for
        additive ones (``weight`` is then the constant amplitude)."""
        import torch

        self.check(image_shape)
        c, h, w = image_shape
        g = torch.Generator().manual_seed(self.seed)
        if self.kind == "mined":
            if self.row is None or self.col is None:
                raise DormantError("a mined trigger has no location yet: mine it from the "
                                   "attacker's images first (dormant.attacks.natural.mine)")
            weight = torch.zeros(c, h, w)
            weight[:, self.row : self.row + self.size, self.col : self.col + self.size] = (
                self.amplitude)
            return weight, torch.full((c, h, w), self.value)
        if self.kind == "patch":
            weight = torch.zeros(c, h, w)
            weight[:, h - self.size :, w - self.size :] = self.amplitude
            ii, jj = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
            target = ((ii + jj) % 2 == 0).float().expand(c, h, w).clone()
            return weight, target
        if self.kind == "blend":
            return torch.full((c, h, w), self.amplitude), torch.rand(c, h, w, generator=g)
        if self.kind == "noise":
            signs = torch.randint(0, 2, (c, h, w), generator=g).float() * 2 - 1
            return torch.full((c, h, w), self.amplitude), signs
        wave = torch.sin(2 * math.pi * self.frequency * torch.arange(w) / w)
        return torch.full((c, h, w), self.amplitude), wave.expand(c, h, w).clone()

    def stamp(self, x: torch.Tensor) -> torch.Tensor:
        """The uint8 batch ``x`` (N, C, H, W) with the trigger applied, as uint8."""
        import torch

        weight, target = (t.to(x.device) for t in self.pattern(tuple(x.shape[1:])))
        xf = x.float() / 255.0
        if self.kind in ("patch", "blend", "mined"):
            out = (1 - weight) * xf + weight * target
        else:
            out = xf + weight * target
        return (out.clamp(0, 1) * 255.0).round().to(torch.uint8)
