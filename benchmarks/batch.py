"""A batch of deletion requests against one request for the same ids, measured back to back
in this process on two copies of one store: the wall time of ``process_batch`` (unlearning,
checks, reports and rows) for 5 requests of 25 ids, and for one request of those 125 ids.
The ratio is the number to watch: a batch should cost little more than one request, since
everything but each request's own measurements (forget accuracy, MIA, the k-leaked attack) is
shared. Prints one JSON object.

The store holds a SISA ensemble (``--sisa``, default shards=5,slices=4) or, with
``--sisa none``, one model, trained in this run; the default policy's checks.

    .venv/bin/python benchmarks/batch.py [--data-root ../shared/datasets] [--train-size 20000]
        [--requests 5] [--ids 25] [--sisa shards=5,slices=4] [--method M] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch

from dormant.cli import main as cli
from dormant.data.sources import default_cache_dir
from dormant.experiments.prepare import load_study_data
from dormant.experiments.spec import RelearnSpec
from dormant.requests import ModelStore, Policy, Request, process_batch

ROOT = Path(__file__).resolve().parents[1]


def _timed(store: Path, ds, reqs: list[Request], device: str) -> dict:
    t0 = time.perf_counter()
    done = process_batch(ModelStore(store), ds, reqs, Policy(), device=device)
    wall = time.perf_counter() - t0
    recs = [rec for rec, _ in done]
    return {"seconds": round(wall, 2),
            "training_seconds": recs[0]["cost"]["batch_training_seconds"],
            "checks_seconds": [rec["durations"]["checks"] for rec in recs],
            "verdicts": [rec["verdict"] for rec in recs]}


def run() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="mnist")
    ap.add_argument("--data-root", default=str(ROOT.parent / "shared/datasets"))
    ap.add_argument("--train-size", type=int, default=20000)
    ap.add_argument("--requests", type=int, default=5)
    ap.add_argument("--ids", type=int, default=25, help="ids per request")
    ap.add_argument("--sisa", default="shards=5,slices=4", help="'none': one model")
    ap.add_argument("--method", default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="dormant-batch-"))
    data = ["--dataset", args.dataset, "--data-root", args.data_root,
            "--train-size", str(args.train_size)]
    sisa = [] if args.sisa == "none" else ["--sisa", args.sisa]
    t0 = time.perf_counter()
    assert cli(["train", *data, *sisa, "--out", str(work / "train"), "--store",
                str(work / "store"), "--name", "m", "--device", args.device]) == 0
    train_seconds = time.perf_counter() - t0
    spec = RelearnSpec(dataset=args.dataset, data_root=args.data_root,
                       train_size=args.train_size)
    ds = load_study_data(spec, default_cache_dir())
    g = torch.Generator().manual_seed(args.seed)
    ids = torch.randperm(len(ds.y_train), generator=g)[: args.requests * args.ids]
    for copy in ("single", "batch"):
        shutil.copytree(work / "store", work / copy)

    def req(these: torch.Tensor) -> Request:
        return Request("m", these, "bench", "benchmark", method=args.method)

    single = _timed(work / "single", ds, [req(ids)], args.device)
    batch = _timed(work / "batch", ds, [req(part) for part in ids.split(args.ids)],
                   args.device)
    print(json.dumps({
        "dataset": args.dataset, "train_size": args.train_size, "sisa": args.sisa,
        "method": args.method or "the version's default", "device": args.device,
        "threads": torch.get_num_threads(), "train_seconds": round(train_seconds, 2),
        "requests": args.requests, "ids_each": args.ids, "single": single, "batch": batch,
        "ratio": round(batch["seconds"] / single["seconds"], 3),
        "training_ratio": round(batch["training_seconds"] / single["training_seconds"], 3),
    }))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    run()
