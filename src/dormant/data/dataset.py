"""The in-memory dataset every layer above works on: uint8 NCHW tensors plus int64 labels."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from dormant.errors import DormantError


def fingerprint_tensors(*tensors: torch.Tensor) -> str:
    """sha256 over shapes, dtypes and raw bytes: two datasets share it only if identical."""
    h = hashlib.sha256()
    for t in tensors:
        t = t.contiguous().cpu()
        h.update(f"{tuple(t.shape)}|{t.dtype}|".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class Dataset:
    """A decoded image-classification dataset.

    ``x_*`` are uint8 tensors of shape (N, C, H, W); ``y_*`` are int64 class indices.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    classes: tuple[str, ...]
    fingerprint: str = ""

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if x.dtype != torch.uint8 or x.ndim != 4:
                raise DormantError(
                    f"dataset {self.name!r}: x_{split} must be uint8 (N, C, H, W), "
                    f"got {x.dtype} {tuple(x.shape)}"
                )
            if y.ndim != 1 or len(y) != len(x):
                raise DormantError(
                    f"dataset {self.name!r}: y_{split} must hold one label per image "
                    f"({len(x)}), got shape {tuple(y.shape)}"
                )
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise DormantError(
                f"dataset {self.name!r}: train images are {tuple(self.x_train.shape[1:])} "
                f"but test images are {tuple(self.x_test.shape[1:])}; give both splits one shape"
            )
        n_cls = len(self.classes)
        for split, y in (("train", self.y_train), ("test", self.y_test)):
            if len(y) and (int(y.min()) < 0 or int(y.max()) >= n_cls):
                raise DormantError(
                    f"dataset {self.name!r}: y_{split} holds labels outside 0..{n_cls - 1}"
                )
        if not self.fingerprint:
            fp = fingerprint_tensors(self.x_train, self.y_train, self.x_test, self.y_test)
            object.__setattr__(self, "fingerprint", fp)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        c, h, w = self.x_train.shape[1:]
        return int(c), int(h), int(w)


def stratified_ids(y: torch.Tensor, n: int, num_classes: int, seed: int) -> torch.Tensor:
    """Sorted ids of a seeded subset of ``n`` labels ``y`` with the class proportions kept."""
    total = len(y)
    if n >= total:
        return torch.arange(total)
    g = torch.Generator().manual_seed(seed)
    picked = []
    counts = torch.bincount(y, minlength=num_classes)
    quota = torch.floor(counts.double() * n / total).long()
    # hand the rounding remainder to the largest classes so the total is exactly n
    rest = n - int(quota.sum())
    quota[torch.argsort(counts, descending=True)[:rest]] += 1
    for c in range(num_classes):
        ids = torch.nonzero(y == c).flatten()
        picked.append(ids[torch.randperm(len(ids), generator=g)[: int(quota[c])]])
    return torch.sort(torch.cat(picked)).values


def stratified_subset(ds: Dataset, n: int | None, seed: int, n_test: int | None = None
                      ) -> Dataset:
    """Seeded subsets of ``n`` training and ``n_test`` test images, class proportions kept;
    ``None`` keeps that part whole."""
    for flag, v in (("--train-size", n), ("--test-size", n_test)):
        if v is not None and v <= 0:
            raise DormantError(f"{flag} must be positive, got {v}")
    keep = None if n is None or n >= len(ds.y_train) else stratified_ids(
        ds.y_train, n, ds.num_classes, seed)
    keep_test = None if n_test is None or n_test >= len(ds.y_test) else stratified_ids(
        ds.y_test, n_test, ds.num_classes, seed)
    if keep is None and keep_test is None:
        return ds
    name = ds.name + (f"[{n}]" if keep is not None else "") + (
        f"[test {n_test}]" if keep_test is not None else "")
    return Dataset(
        name=name,
        x_train=ds.x_train if keep is None else ds.x_train[keep],
        y_train=ds.y_train if keep is None else ds.y_train[keep],
        x_test=ds.x_test if keep_test is None else ds.x_test[keep_test],
        y_test=ds.y_test if keep_test is None else ds.y_test[keep_test],
        classes=ds.classes,
    )


def _count(n: int) -> str:
    """``10^12`` for a round power of ten of a million or more, else ``60,000``."""
    text = str(n)
    if n >= 1_000_000 and text.strip("0") == "1":
        return f"10^{len(text) - 1}"
    return f"{n:,}"


def check_sizes(ds: Dataset, n: int | None, n_test: int | None = None) -> None:
    """Refuse a training or test size larger than ``ds`` has, in one line naming both."""
    for flag, split, asked, have in (("--train-size", "training", n, len(ds.y_train)),
                                     ("--test-size", "test", n_test, len(ds.y_test))):
        if asked is not None and asked > have:
            raise DormantError(f"{flag}: asked for {_count(asked)} {split} images; {ds.name} "
                               f"has {have:,}; give at most {have:,} or leave it out for all")
