"""Forget-set specs: parse ``random:N``, ``class:C``, ``class:C:atypical:F``, ``canary:N``...

Selecting ``atypical``/``typical`` sets needs a per-sample typicality score (a C-score file or
the original model's learning speed) and the original model's fit, so that the chosen set is
memorised rather than never learned.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dormant.errors import DormantError, need_file
from dormant.settings import read_text

SPEC_HELP = (
    "random:N, class:C, class:C:atypical:F, class:C:typical:F, canary:N or ids:PATH "
    "(e.g. class:1:atypical:0.3)"
)
_PATTERNS = {
    "random": re.compile(r"random:(?P<count>\d+)"),
    "canary": re.compile(r"canary:(?P<count>\d+)"),
    "class": re.compile(r"class:(?P<cls>\d+)"),
    "atypical": re.compile(r"class:(?P<cls>\d+):atypical:(?P<frac>[0-9.]+)"),
    "typical": re.compile(r"class:(?P<cls>\d+):typical:(?P<frac>[0-9.]+)"),
    "ids": re.compile(r"ids:(?P<path>.+)"),
}


@dataclass(frozen=True)
class ForgetSpec:
    kind: str
    text: str
    count: int | None = None
    cls: int | None = None
    frac: float | None = None
    path: Path | None = None

    @property
    def needs_scores(self) -> bool:
        return self.kind in ("atypical", "typical")


def parse_forget(text: str) -> ForgetSpec:
    for kind, pattern in _PATTERNS.items():
        m = pattern.fullmatch(text.strip())
        if not m:
            continue
        g = m.groupdict()
        try:
            frac = float(g["frac"]) if "frac" in g else None
        except ValueError:
            frac = -1.0
        if frac is not None and not 0.0 < frac <= 1.0:
            raise DormantError(f"forget spec {text!r}: the fraction must be in (0, 1]")
        count = int(g["count"]) if "count" in g else None
        if count is not None and count < 2:
            raise DormantError(f"forget spec {text!r}: need at least 2 examples to forget")
        return ForgetSpec(
            kind=kind,
            text=text.strip(),
            count=count,
            cls=int(g["cls"]) if "cls" in g else None,
            frac=frac,
            path=Path(g["path"]) if "path" in g else None,
        )
    raise DormantError(f"forget spec {text!r} does not parse; use {SPEC_HELP}")


def read_ids(path: Path, n_train: int) -> torch.Tensor:
    """Training indices from a text file (whitespace or comma separated) or a ``.npy`` file."""
    need_file(path, "ids file", "give a text or .npy file of indices")
    if path.suffix == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError):  # damaged, truncated or holding objects
            raise DormantError(f"ids file {path}: not a plain .npy integer array") from None
        if not np.issubdtype(arr.dtype, np.integer):
            raise DormantError(f"ids file {path}: ids must be integers, got dtype {arr.dtype}")
        ids = [int(v) for v in arr.ravel()]
    else:
        tokens = re.split(r"[\s,]+", read_text(path, "ids file").strip())
        bad = [t for t in tokens if t and not re.fullmatch(r"-?[0-9]+", t)]
        if bad:
            raise DormantError(f"ids file {path}: {bad[0][:40]!r} is not an integer training "
                               "index")
        long = next((t for t in tokens if len(t.lstrip("-")) > 18), None)
        if long is not None:  # no dataset has 10^18 images; int() refuses 4,300 digits
            raise DormantError(f"ids file {path}: id {long[:20]}... is out of range; training "
                               f"ids run 0..{n_train - 1}")
        ids = [int(t) for t in tokens if t]
    return check_ids(ids, n_train, f"ids file {path}")


def check_ids(ids: list[int], n_train: int, where: str) -> torch.Tensor:
    """``ids`` as a tensor of training indices, or one line naming ``where`` and the first bad
    one: none at all, one out of range, or one listed twice."""
    if not ids:
        raise DormantError(f"{where} is empty; list at least one training index")
    out = [i for i in ids if not 0 <= i < n_train]
    if out:
        raise DormantError(
            f"{where}: id {out[0]} is out of range; training ids run 0..{n_train - 1}"
        )
    if len(set(ids)) != len(ids):
        seen: set[int] = set()
        dup = next(i for i in ids if i in seen or seen.add(i))
        raise DormantError(f"{where}: id {dup} appears more than once; list each once")
    return torch.tensor(ids, dtype=torch.long)


def planned_size(spec: ForgetSpec, y: torch.Tensor, num_classes: int) -> int:
    """The forget set's size (an upper bound for typicality specs, which keep only fitted
    images), known before any model is trained, so bad input fails before the work."""
    if spec.kind == "ids":
        return len(read_ids(spec.path, len(y)))
    if spec.kind in ("random", "canary"):
        return spec.count
    members = len(_class_members(spec, y, num_classes))
    return members if spec.kind == "class" else _fraction_size(spec, members)


def check_leaves_retain(spec: ForgetSpec, n_forget: int, n_train: int) -> None:
    """Refuse a forget set that would leave no training image to retain: the retain set is
    what every method fine-tunes on, the oracle retrains on and the attack relearns from."""
    if n_forget >= n_train:
        raise DormantError(f"forget {spec.text}: {n_forget:,} images to forget, but the "
                           f"training set has {n_train:,} and must keep some to retain; "
                           f"forget at most {n_train - 1:,} (or raise train_size)")


def _class_members(spec: ForgetSpec, y: torch.Tensor, num_classes: int) -> torch.Tensor:
    if not 0 <= spec.cls < num_classes:
        raise DormantError(
            f"forget spec {spec.text!r}: class {spec.cls} does not exist; use 0..{num_classes - 1}"
        )
    members = torch.nonzero(y == spec.cls).flatten()
    if len(members) < 2:
        raise DormantError(f"forget {spec.text}: class {spec.cls} has {len(members)} training "
                           "image(s), and a forget set needs at least 2; raise train_size or "
                           "pick another class")
    return members


def _fraction_size(spec: ForgetSpec, members: int) -> int:
    return max(2, int(round(spec.frac * members)))


def canary_labels(
    spec: ForgetSpec, y: torch.Tensor, num_classes: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """For ``canary:N``: relabel N seeded random images with a wrong random class before
    training, so only memorisation can fit them. Other specs return ``y`` unchanged."""
    if spec.kind != "canary":
        return y, None
    check_leaves_retain(spec, spec.count, len(y))
    g = torch.Generator().manual_seed(seed + 7919)
    ids = torch.randperm(len(y), generator=g)[: spec.count]
    shift = torch.randint(1, num_classes, (spec.count,), generator=g)
    y = y.clone()
    y[ids] = (y[ids] + shift) % num_classes
    return y, torch.sort(ids).values


def select_forget(
    spec: ForgetSpec,
    y: torch.Tensor,
    num_classes: int,
    seed: int,
    *,
    canaries: torch.Tensor | None = None,
    scores: torch.Tensor | None = None,
    fitted: torch.Tensor | None = None,
) -> torch.Tensor:
    """The forget ids (sorted). ``scores``: higher = more typical; ``fitted``: bool per id."""
    n = len(y)
    if spec.kind == "ids":
        ids = read_ids(spec.path, n)
        check_leaves_retain(spec, len(ids), n)
        return torch.sort(ids).values
    if spec.kind == "canary":
        return canaries
    if spec.kind == "random":
        check_leaves_retain(spec, spec.count, n)
        g = torch.Generator().manual_seed(seed + 104729)
        return torch.sort(torch.randperm(n, generator=g)[: spec.count]).values
    members = _class_members(spec, y, num_classes)
    if spec.kind == "class":
        return members
    want = _fraction_size(spec, len(members))
    pool = members[fitted[members]] if fitted is not None else members
    # stable sort: ties keep index order, so the pick is deterministic
    order = torch.argsort(scores[pool], descending=spec.kind == "typical", stable=True)
    picked = pool[order[:want]]
    if len(picked) < 2:
        raise DormantError(
            f"forget spec {spec.text!r}: the original model fits only {len(pool)} images of "
            f"class {spec.cls}; train longer or pick another class"
        )
    return torch.sort(picked).values


def load_cscores(path: Path, n_train: int) -> torch.Tensor:
    """C-scores (higher = more typical) from an ``.npz`` with one array, aligned with the
    training set as loaded (before ``--train-size`` subsetting is applied)."""
    need_file(path, "--cscores file", suffix=".npz")
    try:
        with np.load(path, allow_pickle=False) as z:
            key = "scores" if "scores" in z.files else z.files[0]
            arr = np.asarray(z[key], dtype=np.float64).ravel()
    except (ValueError, OSError, IndexError):
        raise DormantError(f"--cscores file {path} is not a numeric .npz array") from None
    if len(arr) != n_train:
        raise DormantError(
            f"--cscores file {path} holds {len(arr)} scores but the training set has {n_train}"
        )
    return torch.from_numpy(arr)
