"""The paper's split of a forget set: a seeded permutation, the first 20% leakable to the
relearning attacker, the last 80% held out for every forget-accuracy measurement."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from dormant.errors import DormantError

LEAK_FRACTION = 0.2


@dataclass(frozen=True)
class Split:
    forget: torch.Tensor  # permuted: leakable first, held-out last
    retain: torch.Tensor  # sorted
    n_leakable: int

    @property
    def leakable(self) -> torch.Tensor:
        return self.forget[: self.n_leakable]

    @property
    def heldout(self) -> torch.Tensor:
        return self.forget[self.n_leakable :]

    def leaked(self, k: int) -> torch.Tensor:
        if not 0 <= k <= self.n_leakable:
            raise DormantError(
                f"k={k} leaked examples asked for, but only {self.n_leakable} of the "
                f"{len(self.forget)} forget examples are leakable; pick k <= {self.n_leakable}"
            )
        return self.forget[:k]

    @property
    def hash(self) -> str:
        h = hashlib.sha256()
        for t in (self.forget, self.retain):
            h.update(t.cpu().numpy().astype("int64").tobytes() + b"|")
        h.update(str(self.n_leakable).encode())
        return h.hexdigest()[:16]


def leakable_count(n_forget: int) -> int:
    """The first 20% of the permuted forget set (at least one example stays held out)."""
    return min(n_forget - 1, int(round(LEAK_FRACTION * n_forget)))


def make_split(forget: torch.Tensor, n_train: int, seed: int) -> Split:
    """Permute ``forget`` with ``seed``; ids not in it form the retain set."""
    if len(forget) < 2:
        raise DormantError("the forget set needs at least 2 examples (1 leakable, 1 held out)")
    g = torch.Generator().manual_seed(seed)
    permuted = forget[torch.randperm(len(forget), generator=g)]
    mask = torch.ones(n_train, dtype=torch.bool)
    mask[forget] = False
    return Split(permuted, torch.nonzero(mask).flatten(), leakable_count(len(forget)))
