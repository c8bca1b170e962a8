"""``dormant audit``: the checks and verdict of a deletion request, for a model unlearned
elsewhere. Both files may be plain safetensors state dicts; nothing of dormant's own is
needed beyond the dataset and the forgotten ids."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from dormant.data import Dataset
from dormant.engine import Progress, resolve_device
from dormant.requests.assess import assess, device_data, load_for, recipe_of, record
from dormant.requests.ledger import Ledger
from dormant.requests.policy import Policy
from dormant.store.files import atomic_write_text, sha256_file


def audit(original: Path, unlearned: Path, ds: Dataset, ids: torch.Tensor, policy: Policy,
          out: Path, *, arch: str | None = None, device: str = "auto", seed: int = 0,
          ledger: Ledger | None = None, progress: Progress | None = None) -> dict:
    """Judge ``unlearned`` against ``original`` for the deletion of training ids ``ids``;
    writes the report into ``out`` and, with ``ledger``, an ``audit`` row."""
    t0 = time.perf_counter()
    dev = resolve_device(device)
    old, side, _ = load_for(Path(original), ds, arch, dev)
    new, _, _ = load_for(Path(unlearned), ds, arch, dev)
    tensors = device_data(ds, dev)
    keep = torch.ones(len(ds.y_train), dtype=torch.bool)
    keep[ids] = False
    a = assess(old, new, tensors, ids, torch.nonzero(keep).flatten(), recipe_of(side, ds),
               ds.num_classes, policy, seed=seed, progress=progress)
    files = {"original": str(original), "unlearned": str(unlearned)}
    rec = record(
        a, False, "an audit promotes nothing; its verdict is the result",
        kind="audit", request_id=None, model=None, from_version=None, to_version=None,
        method=None, hparams={}, requester=None, reason=None, ids=len(ids),
        files=files, sha256={k: sha256_file(Path(p)) for k, p in files.items()},
        durations={"checks": round(a.seconds, 2), "total": round(time.perf_counter() - t0, 2)},
    )
    from dormant.requests.report import write_request_report  # matplotlib: only when used

    write_request_report(rec, out)
    atomic_write_text(out / "record.json", json.dumps(rec, indent=2))
    if ledger is not None:
        ledger.append("audit", {
            **{k: v for k, v in rec.items() if k not in ("request_id", "model", "files")},
            "ids": sorted(int(i) for i in ids.tolist()),
            "audited": files,
        })
    return rec
