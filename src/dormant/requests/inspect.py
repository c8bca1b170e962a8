"""Random inspection of a store model's training set (the seed's longer-term advice: know
where the training data comes from, and inspect it at random).

A seeded random share of the ids the version was trained on (the deleted ones left out) is
scanned by the registered per-sample detectors (``dormant.detectors``) with the model
itself; with the data manifest, each contributor gets its flagged share per detector with
the 95% Wilson interval, and contributors rank by their mean excess over the flagged rate of
everyone else in the sample (``score``). The record is what ``dormant inspect`` writes as
``inspection.json`` and renders as its report.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter

import torch

from dormant.data import Dataset
from dormant.detectors import get_detector
from dormant.engine import Progress, resolve_device
from dormant.errors import DormantError
from dormant.requests.assess import load_for
from dormant.requests.manifest import check_covers
from dormant.requests.store import ModelStore

UNKNOWN = "(no manifest)"
Z95 = 1.959964


def wilson(k: int, n: int) -> tuple[float, float]:
    """The 95% Wilson score interval of a share ``k / n`` (0 to 1 when ``n`` is 0)."""
    if n == 0:
        return 0.0, 1.0
    p, z2 = k / n, Z95 * Z95
    mid = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, mid - half), min(1.0, mid + half)


def check_share(share: float) -> None:
    if not 0 < share <= 1:
        raise DormantError(f"--share {share:g} must lie in (0, 1], e.g. 0.05 for 5%")


def draw_sample(pool: torch.Tensor, share: float, seed: int) -> torch.Tensor:
    """``ceil(share * len(pool))`` ids of ``pool`` (at least one), seeded, ascending. The
    generator's seed is derived from ``seed`` and a salt: the same seed given to another
    seeded draw over the same ids (a study's contribution, say) must not pick the same
    ids."""
    k = max(1, math.ceil(share * len(pool)))
    salted = hashlib.sha256(f"dormant inspect {seed}".encode()).digest()
    g = torch.Generator().manual_seed(int.from_bytes(salted[:8], "little") >> 1)
    return torch.sort(pool[torch.randperm(len(pool), generator=g)[:k]]).values


def inspect_model(store: ModelStore, name: str, version: int | None, ds: Dataset, *,
                  share: float = 0.05, seed: int = 0, detectors: list[str] | None = None,
                  device: str = "auto", progress: Progress | None = None) -> dict:
    """Inspect ``name`` (``version``; None: the promoted one) on a seeded random ``share``
    of its training set with ``detectors`` (default: every registered one)."""
    from dormant.detectors import available_detectors

    check_share(share)
    names = list(dict.fromkeys(detectors or available_detectors()))
    infos = [get_detector(n) for n in names]
    v = store.resolve(name, version)
    path = store.verify_file(v)
    dev = resolve_device(device)
    model, _, _ = load_for(path, ds, None, dev)
    n = len(ds.y_train)
    manifest = store.manifest(v)
    if manifest is not None:
        check_covers(manifest, n, f"the manifest of {name}")
    deleted = store.deleted(v)
    keep = torch.ones(n, dtype=torch.bool)
    gone = [i for i in deleted if 0 <= i < n]
    if len(gone) != len(deleted):
        raise DormantError(f"{name} v{v.version} had ids deleted that this --dataset does not "
                           f"hold ({n} training images); pass the dataset it was trained on")
    keep[torch.tensor(gone, dtype=torch.long)] = False
    pool = torch.nonzero(keep).flatten()
    if len(pool) == 0:
        raise DormantError(f"{name} v{v.version} holds no training id to inspect")
    sample = draw_sample(pool, share, seed)
    x, y = ds.x_train[sample].to(dev), ds.y_train[sample].to(dev)
    reference = ds.x_test.to(dev)
    flags: dict[str, list[bool]] = {}
    for i, info in enumerate(infos):
        if progress is not None:
            progress(f"detector {info.name}", i, len(infos))
        flags[info.name] = info(model, x, y, reference, seed=seed).flags.tolist()
    owner = [UNKNOWN if manifest is None else manifest[int(i)] for i in sample.tolist()]
    in_pool = Counter(UNKNOWN if manifest is None else manifest[int(i)]
                      for i in pool.tolist())
    rows = []
    for who in sorted(set(owner)):
        mine = [j for j, o in enumerate(owner) if o == who]
        line = {"contributor": who, "images": in_pool[who], "sampled": len(mine),
                "flagged": {}, "share": {}, "interval": {}}
        for d in names:
            k = sum(flags[d][j] for j in mine)
            line["flagged"][d], line["share"][d] = k, k / len(mine)
            line["interval"][d] = list(wilson(k, len(mine)))
        rows.append(line)
    # a detector flags a share of everyone (spectral signatures a fixed 7.5% of every
    # class): what ranks a contributor is its excess over everyone else's rate in the sample
    for line in rows:
        rest = len(sample) - line["sampled"]
        line["excess"] = {d: line["share"][d] - (
            (sum(flags[d]) - line["flagged"][d]) / rest if rest else 0.0) for d in names}
        line["score"] = sum(line["excess"].values()) / len(names)
    rows.sort(key=lambda r: (-r["score"], r["contributor"]))
    return {
        "kind": "inspection", "model": name, "version": v.version, "sha256": v.sha256,
        "share": share, "seed": seed, "training_ids": len(pool),
        "deleted_left_out": len(deleted), "sampled": len(sample),
        "manifest": manifest is not None,
        "detectors": {i.name: {"label": i.label, "rule": i.rule,
                               "flagged": sum(flags[i.name])} for i in infos},
        "contributors": rows,
        "samples": [{"id": int(i), "contributor": o, **{d: flags[d][j] for d in names}}
                    for j, (i, o) in enumerate(zip(sample.tolist(), owner, strict=True))],
    }
