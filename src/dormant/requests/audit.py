"""``dormant audit``: the checks and verdict of a deletion request, for a model unlearned
elsewhere. Both files may be plain safetensors state dicts; nothing of dormant's own is
needed beyond the dataset and the forgotten ids.

The tamper verdict needs a retrain oracle. An audit retrains one only when it knows how the
original was trained (a dormant checkpoint's sidecar holds its recipe and seed): a retrain
with a guessed recipe would compare the unlearned model with some other training run, not
with exact unlearning. A caller may hand in its own retrain (``oracle=``, a checkpoint of the
same architecture trained without the ids). Without either, the tamper blocks say
``"no oracle: no verdict"`` and carry only the attack's own numbers."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from dormant.data import Dataset
from dormant.engine import Progress, resolve_device
from dormant.models import create_model
from dormant.requests.assess import assess, device_data, load_for, recipe_of
from dormant.requests.checks import RETRAINED_ORACLE, Oracle
from dormant.requests.ledger import Ledger
from dormant.requests.policy import Policy
from dormant.requests.record import record
from dormant.store.files import atomic_write_text, sha256_file
from dormant.unlearn import UnlearnContext, UnlearnData, unlearn

NO_RECIPE = ("none: the original's training recipe is unknown (a plain state dict), so no "
             "retrain can stand for it; pass oracle= a retrain without the ids")


def audit(original: Path, unlearned: Path, ds: Dataset, ids: torch.Tensor, policy: Policy,
          out: Path, *, arch: str | None = None, oracle: Path | None = None,
          device: str = "auto", seed: int = 0, ledger: Ledger | None = None,
          progress: Progress | None = None) -> dict:
    """Judge ``unlearned`` against ``original`` for the deletion of training ids ``ids``;
    writes the report into ``out`` and, with ``ledger``, an ``audit`` row. The tamper test
    compares with ``oracle`` (a retrain checkpoint) if given, else with a retrain of the
    original's recipe if its sidecar has one, else with nothing (no tamper verdict)."""
    t0 = time.perf_counter()
    dev = resolve_device(device)
    old, side, spec = load_for(Path(original), ds, arch, dev)
    new, _, _ = load_for(Path(unlearned), ds, arch, dev)
    tensors = device_data(ds, dev)
    keep = torch.ones(len(ds.y_train), dtype=torch.bool)
    keep[ids] = False
    retain = torch.nonzero(keep).flatten()
    recipe = recipe_of(side, ds)
    files = {"original": str(original), "unlearned": str(unlearned)}
    t1 = time.perf_counter()
    if oracle is not None:
        ref = Oracle(f"the retrain given ({oracle})", load_for(Path(oracle), ds, arch, dev)[0])
        files["oracle"] = str(oracle)
    elif "recipe" in side:
        x, y = tensors[0], tensors[1]
        forget = torch.as_tensor(ids, dtype=torch.long)
        data = UnlearnData(x, y, forget.to(dev), retain.to(dev), forget[:0].to(dev),
                           ds.num_classes)
        init_seed = side.get("seed", seed)
        ctx = UnlearnContext(recipe, lambda s=None: create_model(
            spec, seed=init_seed if s is None else s), seed, progress)
        ref = Oracle(RETRAINED_ORACLE, unlearn("retrain", old, data, ctx))
    else:
        ref = None
    t_oracle = time.perf_counter() - t1
    a = assess(old, new, tensors, ids, retain, recipe, ds.num_classes, policy, oracle=ref,
               seed=seed, spec=spec, progress=progress)
    rec = record(
        a, False, "an audit promotes nothing; its verdict is the result",
        kind="audit", request_id=None, model=None, from_version=None, to_version=None,
        method=None, hparams={}, requester=None, reason=None, ids=len(ids),
        oracle=ref.label if ref is not None else NO_RECIPE,
        files=files, sha256={k: sha256_file(Path(p)) for k, p in files.items()},
        durations={"oracle": round(t_oracle, 2), "checks": round(a.seconds, 2),
                   "total": round(time.perf_counter() - t0, 2)},
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
