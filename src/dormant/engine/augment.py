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
    b, _, h, w = x.shape
    if mode == "flip-crop":
        flip = (torch.rand(b, generator=generator) < 0.5).to(x.device)
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
    if pad > 0:
        shifts = torch.randint(0, 2 * pad + 1, (2, b), generator=generator).to(x.device)
        xp = F.pad(x, (pad, pad, pad, pad), mode="reflect")
        rows = (shifts[0][:, None] + torch.arange(h, device=x.device))[:, :, None]
        cols = (shifts[1][:, None] + torch.arange(w, device=x.device))[:, None, :]
        idx = torch.arange(b, device=x.device)[:, None, None]
        x = xp.permute(0, 2, 3, 1)[idx, rows, cols].permute(0, 3, 1, 2)
    return x.contiguous(memory_format=torch.channels_last)
