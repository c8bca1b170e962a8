"""Step-based training recipes: optimiser, schedule, batch size, augmentation."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING

from dormant.errors import DormantError

if TYPE_CHECKING:
    import torch

# torch loads when a recipe first builds an optimiser: settings that only hold a recipe
# (the method registry, ``dormant methods``) stay free of it
_OPTIMIZERS = {
    "adam": lambda torch, params, r, **kw: torch.optim.Adam(params, lr=r.lr,
                                                            weight_decay=r.weight_decay, **kw),
    "adamw": lambda torch, params, r, **kw: torch.optim.AdamW(params, lr=r.lr,
                                                              weight_decay=r.weight_decay, **kw),
    "sgd": lambda torch, params, r, **kw: torch.optim.SGD(
        params, lr=r.lr, momentum=r.momentum, weight_decay=r.weight_decay, **kw
    ),
}
AUGMENTATIONS = ("flip-crop", "crop", "none")


@dataclass(frozen=True)
class Recipe:
    """How to train: every loop in dormant (training, unlearning, attacks) runs one of these.

    ``final_lr`` is the end of the cosine schedule; ``None`` means 0.1 x lr, the seed
    paper's pretraining schedule (Adam 1e-4, wd 1e-4, cosine to 0.1 lr, batch 128).
    """

    steps: int
    lr: float = 1e-4
    optimizer: str = "adam"
    weight_decay: float = 0.0
    momentum: float = 0.9
    batch_size: int = 128
    schedule: str = "cosine"
    final_lr: float | None = None
    augment: str = "flip-crop"
    pad: int = 4
    stop_after: int | None = None
    """Stop after this many steps while the schedule still spans ``steps``: the oracle trains
    exactly as many steps as an original that stopped early at memorisation, on the same
    learning-rate curve."""

    def __post_init__(self) -> None:
        if not isinstance(self.steps, int) or self.steps <= 0:
            raise DormantError(f"step count must be a positive integer, got {self.steps!r}")
        if self.stop_after is not None and not 0 < self.stop_after <= self.steps:
            raise DormantError(f"stop_after must be in 1..{self.steps}, got {self.stop_after}")
        if self.batch_size <= 0:
            raise DormantError(f"batch size must be positive, got {self.batch_size}")
        if self.lr <= 0:
            raise DormantError(f"learning rate must be positive, got {self.lr}")
        if self.optimizer not in _OPTIMIZERS:
            raise DormantError(
                f"unknown optimizer {self.optimizer!r}; choose one of: {', '.join(_OPTIMIZERS)}"
            )
        if self.schedule not in ("cosine", "constant"):
            raise DormantError(f"unknown schedule {self.schedule!r}; use cosine or constant")
        if self.augment not in AUGMENTATIONS:
            raise DormantError(
                f"unknown augmentation {self.augment!r}; use one of {', '.join(AUGMENTATIONS)}"
            )

    def with_(self, **changes) -> Recipe:
        """A copy with ``changes``; a new step count drops an early stop made for the old one."""
        if "steps" in changes:
            changes.setdefault("stop_after", None)
        return replace(self, **changes)

    def to_dict(self) -> dict:
        return asdict(self)

    def build(self, params, *, fused: bool = False
              ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
        """The optimiser and schedule over ``params``. ``fused``: one kernel for the whole
        update where this torch has it for the device (a batched group's stacked parameters
        are too large for the per-tensor update to stay in cache), else the default."""
        import torch

        params = list(params)
        opt = None
        if fused:
            try:
                opt = _OPTIMIZERS[self.optimizer](torch, params, self, fused=True)
            except (RuntimeError, TypeError, ValueError):
                opt = None
        opt = opt or _OPTIMIZERS[self.optimizer](torch, params, self)
        end = (0.1 * self.lr if self.final_lr is None else self.final_lr) / self.lr
        total = self.steps

        def factor(step: int) -> float:
            if self.schedule == "constant":
                return 1.0
            return end + (1.0 - end) * 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))

        return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)
