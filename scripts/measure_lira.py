"""Measure LiRA against the loss-threshold attack on MNIST (issue 25, item 1): ``cnn-small``, a
pool of 5,000 training images, 16 shadow models, on a CPU.

Per seed (``--seeds``, a comma-separated list; by default seed 10 alone): a target model
trains on a random half of the pool with the MNIST profile's recipe (30 epochs of 2,500
images, crop augmentation); 16 shadows train on random halves of the same pool (each image in
for exactly 8), as one group (batched where that is faster), cached.
Both attacks score the same 5,000 images against the target; members are the target's half.
Nothing was chosen on these seeds: the recipe is the profile's and N = 16 is the issue's.
Writes ``rows.jsonl`` (one row per seed, without the per-example scores) and ``meta.json``.

    python scripts/measure_lira.py --data-root ../shared/datasets --out results/lira-mnist
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from dormant.data.sources import default_cache_dir, load_dataset
from dormant.engine import fit
from dormant.experiments.profiles import profile_for
from dormant.experiments.shadows import membership_audit
from dormant.models import ModelSpec, create_model
from dormant.store import ModelCache

sys.path.insert(0, str(Path(__file__).parent))
from provenance import write_rows  # noqa: E402

POOL, SHADOWS = 5000, 16


def row(seed: int, data_root: Path, cache: ModelCache) -> dict:
    ds = load_dataset("mnist", root=data_root, cache_dir=default_cache_dir())
    x, y = ds.x_train, ds.y_train
    g = torch.Generator().manual_seed(seed)
    pool = torch.randperm(len(y), generator=g)[:POOL]
    target_in = np.zeros(POOL, bool)
    target_in[torch.randperm(POOL, generator=g)[:POOL // 2].numpy()] = True
    recipe = profile_for("mnist", POOL // 2, ds.image_shape).train
    spec = ModelSpec("cnn-small", 1, 10, 28)
    t0 = time.perf_counter()
    target = create_model(spec, seed=seed)
    fit(target, x, y, pool[torch.as_tensor(target_in)], recipe,
        generator=torch.Generator().manual_seed(seed))
    t_target = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = membership_audit(target, x, y, pool, target_in, spec, recipe, shadows=SHADOWS,
                           seed=seed, cache=cache, fingerprint=ds.fingerprint)
    t_audit = time.perf_counter() - t0
    keep = {k: v for k, v in out.items() if not k.endswith("_scores")}
    loss_tpr = keep["loss"]["tpr_at_1pct"]
    return {"seed": seed, "pool": POOL, "model": "cnn-small", "steps": recipe.steps, **keep,
            "tpr_at_1pct_ratio_online_vs_loss":
                None if loss_tpr == 0 else round(keep["lira_online"]["tpr_at_1pct"] / loss_tpr,
                                                 2),
            "seconds": {"target": round(t_target, 1), "shadows_and_scores": round(t_audit, 1)}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seeds", default="10")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    cache = ModelCache(default_cache_dir() / "lira")
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = [row(s, args.data_root, cache) for s in seeds]
    write_rows(args.out, rows, f"python scripts/measure_lira.py --data-root "
               f"{args.data_root} --out {args.out} --seeds {args.seeds}", seeds)


if __name__ == "__main__":
    main()
