"""Measure the differential backdoor check of ``dormant forget`` on the clean-unlearning attack.

Detection: for each seed, the backdoor study's weakly poisoned MNIST ``cnn-small``
(``configs/mnist-backdoor.yaml``) goes into a store, and the attacker's clean request is
processed with ``dormant forget --method boundary_shrink`` (the study's budget). The check
should flag the target class. False positives: the unpoisoned twin of seed 0 and ten seeded
random clean requests of the same size, with the default method (``retrain``) and with
``boundary_shrink``. ``--phase prepare`` writes the stores, datasets and id files (CPU, from
the backdoor study's model cache); ``--phase run`` processes the requests (``--device cuda``
where there is a GPU). Every request goes through the real CLI; the numbers come from the
records it writes, the tamper test's too: per attack, the excess against the retrain oracle
and its verdict (a ``boundary_shrink`` request also retrains that oracle, so it costs one
training run more than a ``retrain`` request).

    python scripts/measure_request_checks.py --data-root ../shared/datasets --out runs/checks
    python scripts/measure_request_checks.py --seeds 3,4 --clean-offset 100 --out runs/val
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import yaml

from dormant.data import load_dataset
from dormant.data.sources import default_cache_dir
from dormant.experiments.backdoor import check_spec, prepare_victim
from dormant.experiments.backdoor_spec import BackdoorSpec
from dormant.experiments.prepare import load_study_data
from dormant.store import ModelCache, save_checkpoint

METHOD = ["--method", "boundary_shrink", "--hparam", "steps=15", "--hparam", "lr=1e-4"]


def dormant(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "dormant", *args], check=True)


def write_npz(path: Path, x: torch.Tensor, y: torch.Tensor, ds) -> str:
    np.savez_compressed(path, x_train=x.cpu().numpy(), y_train=y.cpu().numpy(),
             x_test=ds.x_test.numpy(), y_test=ds.y_test.numpy())
    return f"npz:{path}"


def add_model(store: Path, name: str, model, victim, dataset: str, work: Path) -> None:
    fp = load_dataset(dataset, cache_dir=default_cache_dir()).fingerprint
    ckpt = work / f"{name}.safetensors"
    save_checkpoint(ckpt, model, victim.mspec, {"recipe": victim.recipe.to_dict(),
                                                "seed": victim.seed, "data_fingerprint": fp})
    dormant("store", "add", str(store), name, str(ckpt))


def forget(store: Path, ref: str, dataset: str, path: Path, tag: str, method: list[str]
           ) -> dict:
    dormant("forget", "--store", str(store), "--model", ref, "--dataset", dataset, "--ids",
            str(path), "--requester", "measure", "--reason", tag, "--device", "cpu", *method)
    rows = [json.loads(p.read_text()) for p in (store / "requests").glob("*/record.json")]
    rec = next(r for r in rows if r["reason"] == tag)
    flags = {c["name"]: c["classes"] for c in rec["checks"] if c["name"] in
             ("nc_shrink", "uap_jump")}
    tamper = {k: {"excess": t.get("excess"), "forget_gap": t.get("forget_gap"),
                  "verdict": t.get("verdict")}
              for k, t in rec["measurements"]["tamper"].items()}
    return {"tag": tag, "verdict": rec["verdict"], **flags,
            "checks": {c["name"]: [None if c["value"] is None else round(c["value"], 3),
                                   c["status"]] for c in rec["checks"]},
            "tamper": tamper, "oracle": rec.get("oracle"),
            "seconds": rec["durations"]["total"]}


def prepare(args, spec) -> None:
    """Victims, datasets, stores and id files (uses the backdoor study's model cache)."""
    ds = load_study_data(spec, default_cache_dir())
    attack = check_spec(spec, ds)
    cache = ModelCache(default_cache_dir())
    for seed in args.seeds:
        v = prepare_victim(spec, attack, ds, seed, cache, None)
        work = args.out / f"seed{seed}"
        work.mkdir(parents=True, exist_ok=True)
        data = write_npz(work / "poisoned.npz", v.planted.x, v.planted.y, ds)
        add_model(work / "store", "victim", v.poisoned, v, data, work)
        _ids(work / "attack.ids", v.request.tolist())
        if seed == args.seeds[0]:
            clean = write_npz(work / "clean.npz", v.x_clean, v.y_clean, ds)
            add_model(work / "clean-store", "clean", v.unpoisoned, v, clean, work)
            for i in range(args.clean):
                g = torch.Generator().manual_seed(1000 + args.clean_offset + i)
                ids = torch.randperm(len(v.y_clean), generator=g)[: len(v.request)]
                _ids(work / f"clean-{i}.ids", sorted(ids.tolist()))


def _ids(path: Path, ids: list[int]) -> None:
    path.write_text("\n".join(map(str, ids)) + "\n")


def run(args, target: int) -> None:
    log = args.out / "results.jsonl"
    results = []

    def keep(row: dict) -> None:
        results.append(row)
        with log.open("a") as f:
            f.write(json.dumps(row) + "\n")

    dev = ["--device", args.device]
    for seed in args.seeds:
        work = args.out / f"seed{seed}"
        data = f"npz:{work / 'poisoned.npz'}"
        r = forget(work / "store", "victim@1", data, work / "attack.ids", f"attack-{seed}",
                   METHOD + dev)
        keep({"kind": "attack", "seed": seed, "target": target, **r})
    work = args.out / f"seed{args.seeds[0]}"
    methods = {"boundary_shrink": METHOD, "retrain": []}
    for name in args.fp_methods:
        for i in range(args.clean):
            r = forget(work / "clean-store", "clean@1", f"npz:{work / 'clean.npz'}",
                       work / f"clean-{i}.ids", f"clean-{name}-{i}", methods[name] + dev)
            keep({"kind": "clean", "method": name, "seed": i, **r})
    attacks = [r for r in results if r["kind"] == "attack"]
    hit = sum(target in set(r["nc_shrink"]) | set(r["uap_jump"]) for r in attacks)
    print(f"detection: target flagged on {hit}/{len(attacks)} seeds")
    for name in args.fp_methods:
        cl = [r for r in results if r["kind"] == "clean" and r["method"] == name]
        fp = sum(bool(r["nc_shrink"] or r["uap_jump"]) for r in cl)
        print(f"false positives ({name}): {fp}/{len(cl)} clean requests flag any class")
        words = [str(t["verdict"]) for r in cl for t in r["tamper"].values()]
        print(f"tamper verdicts ({name}, against the retrain oracle): "
              + ", ".join(f"{w} {words.count(w)}" for w in sorted(set(words))))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-root", default="../shared/datasets")
    ap.add_argument("--out", type=Path, default=Path("runs/request-checks"))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--clean", type=int, default=10, help="clean requests for the FP rate")
    ap.add_argument("--clean-offset", type=int, default=0,
                    help="draw other clean requests (a held-out validation set)")
    ap.add_argument("--fp-methods", default="retrain,boundary_shrink")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--phase", choices=["prepare", "run", "both"], default="both")
    args = ap.parse_args()
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.fp_methods = args.fp_methods.split(",")
    cfg = yaml.safe_load(Path("configs/mnist-backdoor.yaml").read_text())
    spec = BackdoorSpec(**{**cfg, "data_root": args.data_root, "device": "cpu",
                           "conditions": ["attack", "unpoisoned"]})
    if args.phase in ("prepare", "both"):
        prepare(args, spec)
    if args.phase in ("run", "both"):
        run(args, spec.target)


if __name__ == "__main__":
    main()
