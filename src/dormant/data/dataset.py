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


def stratified_subset(ds: Dataset, n: int, seed: int) -> Dataset:
    """A seeded subset of ``n`` training images with the class proportions kept; test unchanged."""
    total = len(ds.y_train)
    if n <= 0:
        raise DormantError(f"--train-size must be positive, got {n}")
    if n >= total:
        return ds
    g = torch.Generator().manual_seed(seed)
    picked = []
    counts = torch.bincount(ds.y_train, minlength=ds.num_classes)
    quota = torch.floor(counts.double() * n / total).long()
    # hand the rounding remainder to the largest classes so the total is exactly n
    rest = n - int(quota.sum())
    quota[torch.argsort(counts, descending=True)[:rest]] += 1
    for c in range(ds.num_classes):
        ids = torch.nonzero(ds.y_train == c).flatten()
        picked.append(ids[torch.randperm(len(ids), generator=g)[: int(quota[c])]])
    keep = torch.sort(torch.cat(picked)).values
    return Dataset(
        name=f"{ds.name}[{n}]",
        x_train=ds.x_train[keep],
        y_train=ds.y_train[keep],
        x_test=ds.x_test,
        y_test=ds.y_test,
        classes=ds.classes,
    )
