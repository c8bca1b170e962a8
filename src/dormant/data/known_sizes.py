"""The published sizes of the datasets ``dormant`` knows by name, so that ``dormant plan``,
which trains nothing, can count a study's cells and time a step without the data on disk.

The counts are per class, in label order, as torchvision's loaders give them (SVHN's digit 0
is label 0). A stand-in built from them has the real label counts and image shape, and blank
images: enough to size forget sets, subsets and the model, never to train or evaluate.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dormant.data.dataset import Dataset, stratified_subset


@dataclass(frozen=True)
class Sizes:
    shape: tuple[int, int, int]
    train: tuple[int, ...]
    test: tuple[int, ...]


KNOWN = {
    "mnist": Sizes((1, 28, 28), (5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949),
                   (980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009)),
    "fashion-mnist": Sizes((1, 28, 28), (6000,) * 10, (1000,) * 10),
    "cifar10": Sizes((3, 32, 32), (5000,) * 10, (1000,) * 10),
    "cifar100": Sizes((3, 32, 32), (500,) * 100, (100,) * 100),
    "svhn": Sizes((3, 32, 32),
                  (4948, 13861, 10585, 8497, 7458, 6882, 5727, 5595, 5045, 4659),
                  (1744, 5099, 4149, 2882, 2523, 2384, 1977, 2019, 1660, 1595)),
}


def _labels(counts: tuple[int, ...]) -> torch.Tensor:
    return torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))


def stand_in(name: str, train_size: int | None = None, test_size: int | None = None
             ) -> Dataset | None:
    """A dataset with ``name``'s label counts and image shape and blank images (``None`` for
    a name without published sizes), cut to ``train_size``/``test_size`` as a study cuts the
    real one. The full-size images are one broadcast zero image: no memory per image."""
    sizes = KNOWN.get(name.lower())
    if sizes is None:
        return None
    y_train, y_test = _labels(sizes.train), _labels(sizes.test)
    blank = torch.zeros((1, *sizes.shape), dtype=torch.uint8)
    ds = Dataset(name, blank.expand(len(y_train), *sizes.shape), y_train,
                 blank.expand(len(y_test), *sizes.shape), y_test,
                 tuple(str(i) for i in range(len(sizes.train))),
                 fingerprint=f"known-sizes:{name}")
    return stratified_subset(ds, train_size, seed=0, n_test=test_size)
