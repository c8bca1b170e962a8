"""SISA against monolithic training, measured back to back in this process: the accuracy of
both, and the training seconds of sequential deletion requests of 1, 10 and 100 random ids
against a full retrain without them. Prints one JSON object.

The reference is the monolithic model trained from scratch with the dataset profile's recipe
(what ``dormant train`` runs and ``dormant forget --method retrain`` reruns), timed in this
run. Each request deletes ids drawn at random among those still trained on, from the ensemble
the previous request left, as a store processes them one after another.

    .venv/bin/python benchmarks/sisa.py [--data-root ../shared/datasets] [--train-size 20000]
        [--shards 5] [--slices 4] [--sizes 1,10,100] [--requests 5] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from dormant.data.sources import default_cache_dir
from dormant.engine import evaluate, fit, resolve_device
from dormant.experiments.prepare import load_study_data
from dormant.experiments.profiles import profile_for
from dormant.experiments.spec import RelearnSpec
from dormant.models import ModelSpec, create_model
from dormant.models.ensemble import Ensemble
from dormant.unlearn.sisa import Plan, SisaHparams, forget, train

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="mnist")
    ap.add_argument("--data-root", default=str(ROOT.parent / "shared/datasets"))
    ap.add_argument("--train-size", type=int, default=20000)
    ap.add_argument("--shards", type=int, default=5)
    ap.add_argument("--slices", type=int, default=4)
    ap.add_argument("--sizes", default="1,10,100")
    ap.add_argument("--requests", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    spec = RelearnSpec(dataset=args.dataset, data_root=args.data_root,
                       train_size=args.train_size)
    ds = load_study_data(spec, default_cache_dir())
    dev = resolve_device(args.device)
    x, y = ds.x_train.to(dev), ds.y_train.to(dev)
    xt, yt = ds.x_test.to(dev), ds.y_test.to(dev)
    profile = profile_for(args.dataset, len(y), ds.image_shape)
    c, h, _ = ds.image_shape
    mspec = ModelSpec(profile.model, c, ds.num_classes, h)
    init = lambda s: create_model(mspec, seed=s)  # noqa: E731
    every = torch.arange(len(y))

    mono = init(args.seed)
    t0 = time.perf_counter()
    fit(mono, x, y, every.to(dev), profile.train,
        generator=torch.Generator().manual_seed(args.seed))
    full_s = time.perf_counter() - t0

    plan = Plan.of(SisaHparams(shards=args.shards, slices=args.slices), profile.train, len(y),
                   args.seed)
    state, cost = train(plan, x, y, every, init)
    ens = state.ensemble(init, dev)
    vote = Ensemble(list(ens.shards), "vote")
    out = {
        "dataset": args.dataset, "train_size": len(y), "model": mspec.name,
        "shards": args.shards, "slices": args.slices, "device": dev.type,
        "threads": torch.get_num_threads(),
        "monolithic": {"test_acc": round(evaluate(mono, xt, yt).acc, 2),
                       "train_seconds": round(full_s, 2),
                       "steps": profile.train.stop_after or profile.train.steps},
        "sisa": {"test_acc_mean": round(evaluate(ens, xt, yt).acc, 2),
                 "test_acc_vote": round(evaluate(vote, xt, yt).acc, 2),
                 "train_seconds": round(cost.seconds, 2), "steps": cost.steps},
        "requests": {},
    }
    out["sisa"]["accuracy_gap"] = round(out["monolithic"]["test_acc"]
                                        - out["sisa"]["test_acc_mean"], 2)
    g = torch.Generator().manual_seed(args.seed + 1)
    for size in map(int, args.sizes.split(",")):
        seconds, shards, steps = [], [], []
        for _ in range(args.requests):
            live = state.assignment.trained()
            ids = live[torch.randperm(len(live), generator=g)[:size]]
            state, cost = forget(state, x, y, ids, init)
            seconds.append(round(cost.seconds, 3))
            shards.append(len(cost.stages))
            steps.append(cost.steps)
        median = statistics.median(seconds)
        out["requests"][str(size)] = {
            "seconds": seconds, "median_seconds": median, "shards_retrained": shards,
            "steps": steps, "full_retrain_seconds": round(full_s, 2),
            "speedup": round(full_s / median, 2)}
        print(json.dumps({size: out["requests"][str(size)]}), flush=True)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
