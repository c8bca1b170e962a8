"""The cost of N shadow models on MNIST: one at a time (``fit``, the reference), as one group
(``fit_group``: batched where that is faster, else one at a time), batched regardless, and as
two groups in two worker processes; and a SISA stage of 5 shards (disjoint data) the same
ways. Every case trains the same models
(same ids, seeds and steps) and is timed in this run; ratios are against one at a time.

Each shadow trains on a random half of a pool of 5,000 MNIST training images, with the MNIST
profile's recipe (batch 128, crop augmentation for ``cnn-small``, none for ``mlp``) for
``--steps`` steps: the ratio, not the absolute time, is what carries over to the full budget.
Prints one JSON object per case.

    .venv/bin/python benchmarks/shadows.py [--models mlp,cnn-small] [--n 16] [--steps 100]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from dormant.data.sources import default_cache_dir, load_dataset
from dormant.engine import fit
from dormant.engine.group import fit_group
from dormant.experiments.profiles import profile_for
from dormant.metrics.lira import membership
from dormant.models import ModelSpec, create_model

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
POOL = 5000


def _setup(arch: str, n: int, steps: int, sisa: bool):
    ds = load_dataset("mnist", root=SHARED, cache_dir=default_cache_dir())
    x, y = ds.x_train, ds.y_train
    pool = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))[:POOL]
    recipe = profile_for("mnist", POOL // 2, ds.image_shape).train.with_(steps=steps)
    if arch == "mlp":
        recipe = recipe.with_(augment="none")
    if sisa:  # disjoint shards of the pool
        ids = [pool[s::n] for s in range(n)]
    else:
        keep = membership(n, POOL, 0)
        ids = [pool[torch.as_tensor(k)] for k in keep]
    return x, y, ids, recipe, ModelSpec(arch, 1, 10, 28)


def _group(args) -> float:
    arch, n, steps, sisa, members = args
    torch.set_num_threads(1)
    x, y, ids, recipe, spec = _setup(arch, n, steps, sisa)
    models = [create_model(spec, seed=m) for m in members]
    t0 = time.perf_counter()
    fit_group(models, x, y, [ids[m] for m in members], recipe,
              generators=[torch.Generator().manual_seed(m) for m in members])
    return time.perf_counter() - t0


def case(arch: str, n: int, steps: int, sisa: bool = False) -> dict:
    x, y, ids, recipe, spec = _setup(arch, n, steps, sisa)
    # warm-up: the process's first steps of a model pay for kernel set-up, on either side
    fit(create_model(spec, seed=0), x, y, ids[0], recipe.with_(steps=5),
        generator=torch.Generator().manual_seed(0))
    t0 = time.perf_counter()
    for m in range(n):
        fit(create_model(spec, seed=m), x, y, ids[m], recipe,
            generator=torch.Generator().manual_seed(m))
    alone = time.perf_counter() - t0
    models = [create_model(spec, seed=m) for m in range(n)]
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        fit_group(models, x, y, ids, recipe,
                  generators=[torch.Generator().manual_seed(m) for m in range(n)])
    group = time.perf_counter() - t0
    path = "one at a time" if any("one at a time" in str(w.message) for w in said) \
        else "batched"
    models = [create_model(spec, seed=m) for m in range(n)]
    t0 = time.perf_counter()
    fit_group(models, x, y, ids, recipe, batched=True,
              generators=[torch.Generator().manual_seed(m) for m in range(n)])
    forced = time.perf_counter() - t0
    out = {"case": f"{'sisa stage' if sisa else 'shadows'}: {n} x {arch}", "steps": steps,
           "threads": torch.get_num_threads(), "one_at_a_time_s": round(alone, 2),
           "one_group_s": round(group, 2), "group_chose": path,
           # when the group chose one at a time it runs the same loop as the reference, so
           # its ratio is run-to-run noise around 1
           "speedup_group": round(alone / group, 2),
           "batched_regardless_s": round(forced, 2),
           "speedup_batched_regardless": round(alone / forced, 2)}
    if not sisa:
        halves = [list(range(0, n // 2)), list(range(n // 2, n))]
        t0 = time.perf_counter()
        with ProcessPoolExecutor(2) as pool:  # a local pool of two one-thread workers
            list(pool.map(_group, [(arch, n, steps, sisa, h) for h in halves]))
        two = time.perf_counter() - t0
        out |= {"two_processes_of_half_s": round(two, 2),
                "speedup_two_processes": round(alone / two, 2)}
    return out


def cli() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="mlp,cnn-small")
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--steps", type=int, default=100)
    args = ap.parse_args()
    for arch in args.models.split(","):
        for sisa in (False, True):
            r = case(arch, 5 if sisa else args.n, args.steps, sisa)
            print(json.dumps(r), flush=True)
            print(f"done {r['case']}", file=sys.stderr)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    cli()
