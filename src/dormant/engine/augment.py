"""Batched augmentation: one random flip mask and one gather per batch, no per-sample Python."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def augment(x: torch.Tensor, mode: str, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Random horizontal flip and reflect-padded random crop of a float (B, C, H, W) batch.

    Random draws come from ``generator`` (CPU) so results do not depend on the device.
    """
    if mode == "none" or len(x) == 0:
        return x
    return apply_moves(x, draw_moves(mode, pad, len(x), generator), pad)


def draw_moves(mode: str, pad: int, b: int, generator: torch.Generator
               ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The random draws of :func:`augment` for a batch of ``b``, in its order: the flip mask
    (``flip-crop`` only), then the crop offsets (rows, columns) when ``pad`` > 0."""
    flip = (torch.rand(b, generator=generator) < 0.5) if mode == "flip-crop" else None
    shifts = torch.randint(0, 2 * pad + 1, (2, b), generator=generator) if pad > 0 else None
    return flip, shifts


def apply_moves(x: torch.Tensor, moves: tuple[torch.Tensor | None, torch.Tensor | None],
                pad: int) -> torch.Tensor:
    """Apply drawn moves to ``x`` (B, C, H, W): a group of models draws each model's moves
    with its own generator and applies them all in one gather."""
    flip, shifts = moves
    _, _, h, w = x.shape
    if flip is not None:
        x = torch.where(flip.to(x.device)[:, None, None, None], x.flip(3), x)
    if shifts is not None:
        b = len(x)
        shifts = shifts.to(x.device)
        xp = F.pad(x, (pad, pad, pad, pad), mode="reflect")
        rows = (shifts[0][:, None] + torch.arange(h, device=x.device))[:, :, None]
        cols = (shifts[1][:, None] + torch.arange(w, device=x.device))[:, None, :]
        idx = torch.arange(b, device=x.device)[:, None, None]
        x = xp.permute(0, 2, 3, 1)[idx, rows, cols].permute(0, 3, 1, 2)
    return x.contiguous(memory_format=torch.channels_last)
