"""The study's LiRA column against its null (issue 25's negative control): on digits, with the
study's design and 8 shadows per seed, the LiRA AUC of the study's oracle, of independent
retrains on the same retain set (their own initialisation and seed), and of the original.

Independent retrains are what the null is drawn from, so their AUC should sit at 0.5; the
oracle shares the original's initialisation and seed (the study's convention), so any offset
of its AUC from theirs is the oracle's, not the attack's. Writes ``rows.jsonl`` (one row per
seed) and ``meta.json``.

    python scripts/measure_lira_null.py --out results/lira-null-digits [--seeds 0,1,2,3]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from dormant.data import load_dataset
from dormant.data.sources import default_cache_dir
from dormant.engine import fit
from dormant.experiments.membership import design, lira_columns
from dormant.experiments.relearn import prepare
from dormant.experiments.spec import RelearnSpec
from dormant.models import create_model
from dormant.store import ModelCache

sys.path.insert(0, str(Path(__file__).parent))
from provenance import write_rows  # noqa: E402

SHADOWS, RETRAINS = 8, 6


def row(seed: int, cache: ModelCache) -> dict:
    ds = load_dataset("digits", cache_dir=default_cache_dir())
    prep = prepare(RelearnSpec(dataset="digits", device="cpu"), ds, seed, cache, None)
    d = design(prep, SHADOWS, cache)

    def auc(model) -> float:
        return lira_columns(d, model, prep.recipe, ["lira"])["lira_auc"]

    fresh = []
    for i in range(RETRAINS):
        s = 1_000_003 * (seed + 1) + i  # seeds no shadow, oracle or original uses
        m = create_model(prep.spec, seed=s)
        fit(m, prep.x, prep.y, prep.split.retain, prep.recipe,
            generator=torch.Generator().manual_seed(s))
        fresh.append(auc(m))
    return {"seed": seed, "shadows": SHADOWS, "heldout": len(prep.split.heldout),
            "original": auc(prep.original), "oracle": auc(prep.oracle),
            "independent_retrains": fresh,
            "independent_mean": round(float(np.mean(fresh)), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seeds", default="0,1,2,3")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    cache = ModelCache(default_cache_dir() / "lira-null")
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = [row(s, cache) for s in seeds]
    write_rows(args.out, rows, f"python scripts/measure_lira_null.py --out {args.out} "
               f"--seeds {args.seeds}", seeds)


if __name__ == "__main__":
    main()
