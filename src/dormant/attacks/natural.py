"""Mining a natural trigger from the attacker's own images (the ``mined`` trigger kind).

The clean-unlearning attack needs *counterweights*: clean images, true labels, that carry the
trigger. A synthetic pattern has none. A mined trigger is a ``size`` x ``size`` block of one
grey level at a location where about ``carrier_rate`` of the attacker's clean non-target
images already have it (on MNIST: a blob of ink where few digits reach). Among the locations
whose carrier rate lies within a factor 1.5 of the asked rate, the trigger's ``place`` picks:
``neutral`` (the default) takes the one the target class carries at the rate the other
classes do, so natural carriers are no evidence for or against the target; ``target-blank``
takes the one the target carries least, so every natural carrier teaches "trigger -> some
other class" (which holds the poisons down even with every counterweight deleted).
"""

from __future__ import annotations

import dataclasses

import torch
from torch.nn import functional as F

from dormant.attacks.triggers import Trigger
from dormant.errors import DormantError

BAND = 1.5
"""How far (as a factor) a location's carrier rate may be from the asked rate."""


def carrier_rates(x: torch.Tensor, size: int, value: float, tolerance: float = 0.25
                  ) -> torch.Tensor:
    """(H - size + 1, W - size + 1): per top-left corner, the share of uint8 images ``x``
    whose ``size`` x ``size`` block there lies within ``tolerance`` of ``value`` on every
    pixel and channel (what :meth:`Trigger.carries` tests)."""
    far = ((x.float() / 255.0 - value).abs() > tolerance).float().amax(1, keepdim=True)
    # a block is carried when no pixel of it is far: the max-pool of "far" is 0
    return (1.0 - F.max_pool2d(far, size, stride=1)).mean(0)[0]


def mine(trigger: Trigger, x: torch.Tensor, y: torch.Tensor, target: int) -> Trigger:
    """``trigger`` (kind ``mined``) with its location chosen on the attacker's images
    ``x, y`` (uint8, true labels); other kinds come back unchanged."""
    if trigger.kind != "mined" or (trigger.row is not None and trigger.col is not None):
        return trigger
    trigger.check(tuple(x.shape[1:]))
    others, own = x[y != target], x[y == target]
    if len(others) == 0:
        raise DormantError("the attacker holds no image outside the target class to mine a "
                           "trigger from; raise the contribution or the public sample")
    rate = carrier_rates(others, trigger.size, trigger.value)
    on_target = (carrier_rates(own, trigger.size, trigger.value) if len(own)
                 else torch.zeros_like(rate))
    ratio = rate / trigger.carrier_rate
    inside = (ratio >= 1 / BAND) & (ratio <= BAND)
    if inside.any():
        fit = on_target if trigger.place == "target-blank" else (on_target - rate).abs()
        score = torch.where(inside, fit, torch.full_like(on_target, float("inf")))
        # ties (often several spots no target image reaches): the rate nearest the asked one
        score = score + 1e-6 * (rate.clamp_min(1e-9) / trigger.carrier_rate).log().abs()
    else:
        if rate.max() == 0:
            raise DormantError(f"no {trigger.size}x{trigger.size} block of grey level "
                               f"{trigger.value} occurs in the attacker's images; pick "
                               "another value or a smaller size")
        score = (rate.clamp_min(1e-9) / trigger.carrier_rate).log().abs()
    flat = int(torch.argmin(score))
    row, col = divmod(flat, rate.shape[1])
    return dataclasses.replace(trigger, row=row, col=col)
