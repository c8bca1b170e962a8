"""Neural Cleanse: every class's trigger in one batched optimisation, against the usual
one-class-at-a-time loop, on the same BadNets-poisoned model, the same clean images and the
same number of epochs. Prints one JSON object: both timings, their ratio, and whether the two
agree (same flagged classes, anomaly indices within 5%).

    .venv/bin/python benchmarks/neural_cleanse.py [--model mlp|cnn-small] [--epochs 40]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time

import torch

from dormant.attacks import PoisonSpec, Trigger, attack_success_rate, poison
from dormant.data.sources import load_dataset
from dormant.defenses import NeuralCleanseConfig, mad_outliers, reverse_triggers
from dormant.engine import Recipe, fit
from dormant.models import ModelSpec, create_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="mlp", choices=["mlp", "cnn-small"])
    ap.add_argument("--epochs", type=int, default=40)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as cache:
        ds = load_dataset("digits", cache_dir=cache)
    trigger = Trigger("patch", size=3)
    p = poison(ds.x_train, ds.y_train, PoisonSpec(target=0, trigger=trigger, per_class=16), 10,
               seed=0)
    model = create_model(ModelSpec(args.model, 1, 10, 8), seed=0)
    fit(model, p.x, p.y, torch.arange(len(p.y)),
        Recipe(steps=600, lr=1e-3, augment="none", final_lr=1e-5),
        generator=torch.Generator().manual_seed(0))
    asr = attack_success_rate(model, ds.x_test, ds.y_test, trigger, 0)
    cfg = NeuralCleanseConfig(epochs=args.epochs)
    ids = torch.arange(0, len(ds.y_test), 2)
    print(f"BadNets {args.model} on digits: ASR {asr:.1f}%", file=sys.stderr)

    t0 = time.perf_counter()
    batched = reverse_triggers(model, ds.x_test, ds.y_test, ids, 10, cfg, seed=0)
    batched_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    one = [reverse_triggers(model, ds.x_test, ds.y_test, ids, 10, cfg, classes=[k], seed=0)
           for k in range(10)]
    loop_s = time.perf_counter() - t0
    loop_norms = torch.cat([r.norms for r in one])
    loop_anomaly, _, loop_flagged = mad_outliers(loop_norms)
    print(json.dumps({
        "case": f"neural-cleanse-{args.model}-digits-10-classes", "epochs": args.epochs,
        "batched_seconds": round(batched_s, 4), "loop_seconds": round(loop_s, 4),
        "ratio": round(loop_s / batched_s, 2),
        "batched_flagged": batched.flagged, "loop_flagged": loop_flagged,
        "batched_anomaly_index": round(batched.anomaly_index, 4),
        "loop_anomaly_index": round(loop_anomaly, 4),
        "same_result": batched.flagged == loop_flagged
        and abs(batched.anomaly_index - loop_anomaly) <= 0.05 * abs(loop_anomaly),
        "max_norm_diff": round(float((batched.norms - loop_norms).abs().max()), 6),
        "threads": torch.get_num_threads(),
    }))


if __name__ == "__main__":
    main()
