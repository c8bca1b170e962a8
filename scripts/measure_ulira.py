"""Measure U-LiRA against SVC's membership attack on digits (issue 25, item 2).

Per seed (``--seeds``, a comma-separated list; by default seed 10 alone) and method
(``--methods``, default retrain, gradient_ascent, scrub; each at the digits preset, the budget
the studies run): 16 shadow
splits of the whole digits training set (the MLP, the digits profile's recipe), 50
candidates, each forgotten by the 8 splits that trained on it. Reported per method: U-LiRA's
AUC and accuracy at telling unlearned from retrained models on the forgotten candidates,
SVC's MIA AUC of the forget sets on the unlearned models and on the retrained references (the
oracle), and the retain examples' LiRA exposure before and after unlearning. The originals and
the references are trained once and shared by every method (the model cache's build log says
so). Writes ``rows.jsonl`` (one row per seed and method, without per-candidate scores) and
``meta.json``.

    python scripts/measure_ulira.py --out results/ulira-digits
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from dormant.data.sources import default_cache_dir, load_dataset
from dormant.experiments.profiles import profile_for
from dormant.experiments.ulira import splits, ulira, unlearned
from dormant.models import ModelSpec
from dormant.store import ModelCache
from dormant.unlearn import resolve_hparams

sys.path.insert(0, str(Path(__file__).parent))
from provenance import write_meta  # noqa: E402

MODELS, CANDIDATES = 16, 50


def rows_for(seed: int, methods: list[str], cache: ModelCache) -> list[dict]:
    ds = load_dataset("digits", cache_dir=default_cache_dir())
    x, y = ds.x_train, ds.y_train
    prof = profile_for("digits", len(y) // 2, ds.image_shape)
    spec = ModelSpec(prof.model, 1, 10, 8)
    t0 = time.perf_counter()
    s = splits(x, y, torch.arange(len(y)), spec, prof.train, models=MODELS,
               candidates=CANDIDATES, seed=seed, cache=cache, fingerprint=ds.fingerprint)
    shared = time.perf_counter() - t0
    out = []
    for method in methods:
        t0 = time.perf_counter()
        stages = [(method, resolve_hparams(method, prof.preset, {}, n_train=len(y)))]
        u = unlearned(s, x, y, spec, prof.train, stages, ds.num_classes, seed=seed,
                      cache=cache, fingerprint=ds.fingerprint)
        r = ulira(s, u, x, y, prof.train, test=(ds.x_test, ds.y_test))
        r.pop("candidate_score_gap")
        out.append({"seed": seed, "method": method, "preset": prof.preset, **r,
                    "seconds": {"shared_splits": round(shared, 1),
                                "method": round(time.perf_counter() - t0, 1)}})
        print(json.dumps(out[-1]), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seeds", default="10")
    ap.add_argument("--methods", default="retrain,gradient_ascent,scrub")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    cache = ModelCache(default_cache_dir() / "ulira")
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = [r for s in seeds for r in rows_for(s, args.methods.split(","), cache)]
    with open(args.out / "rows.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    builds = [b for b in cache.build_log() if b["kind"] in ("shadow", "retrained")]
    write_meta(args.out, f"python scripts/measure_ulira.py --out {args.out} --seeds "
                         f"{args.seeds} --methods {args.methods}", len(rows), seeds,
               shared_models_built=len(builds))


if __name__ == "__main__":
    main()
