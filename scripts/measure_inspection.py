"""Measure random inspection (``dormant inspect``) on the camouflage victim: which share of
the attacker's images, of its poisons and camouflage, and of clean contributors' images the
per-sample detectors flag at a 5% random sample.

Per seed (``--seeds``, default the reported 10-14), the backdoor study's camouflaged victim
(``--config``, from the study's model cache: run the study first, or the victims train here)
goes into a store with a data manifest: the attacker's 20% contribution under ``attacker``,
the other ids split at random among ``--clean`` clean contributors. ``dormant inspect``
then scans a seeded 5% of the training set through the real CLI; the numbers come from the
``inspection.json`` it writes.

    python scripts/measure_inspection.py --data-root ../shared/datasets --out runs/inspection
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch
import yaml

from dormant.data.sources import default_cache_dir
from dormant.experiments.backdoor import check_spec, prepare_victim
from dormant.experiments.backdoor_spec import BackdoorSpec
from dormant.experiments.prepare import load_study_data
from dormant.requests.manifest import manifest_text
from dormant.store import ModelCache, save_checkpoint

sys.path.insert(0, str(Path(__file__).parent))
from measure_request_checks import write_npz  # noqa: E402


def dormant(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "dormant", *args], check=True)


def manifest_of(planted, n: int, clean: int, seed: int) -> dict[int, str]:
    own = set(planted.contribution.tolist())
    others = torch.tensor([i for i in range(n) if i not in own])
    g = torch.Generator().manual_seed(seed)
    order = others[torch.randperm(len(others), generator=g)]
    out = dict.fromkeys(own, "attacker")
    for k, part in enumerate(order.chunk(clean)):
        out.update(dict.fromkeys(part.tolist(), f"clean-{k + 1}"))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-root", default="../shared/datasets")
    ap.add_argument("--out", type=Path, default=Path("runs/inspection"))
    ap.add_argument("--config", type=Path, default=Path("configs/mnist-camouflage.yaml"))
    ap.add_argument("--seeds", default="10,11,12,13,14")
    ap.add_argument("--share", type=float, default=0.05)
    ap.add_argument("--clean", type=int, default=4, help="clean contributors")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    cfg = yaml.safe_load(args.config.read_text())
    spec = BackdoorSpec(**{**cfg, "data_root": args.data_root, "device": "cpu"})
    ds = load_study_data(spec, default_cache_dir())
    attack = check_spec(spec, ds)
    cache = ModelCache(default_cache_dir())
    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / "results.jsonl"
    for seed in (int(s) for s in args.seeds.split(",")):
        v = prepare_victim(spec, attack, ds, seed, cache, None, default_cache_dir())
        work = args.out / f"seed{seed}"
        work.mkdir(parents=True, exist_ok=True)
        data = write_npz(work / "poisoned.npz", v.planted.x, v.planted.y, ds)
        ckpt = work / "victim.safetensors"
        save_checkpoint(ckpt, v.poisoned, v.mspec, {"recipe": v.recipe.to_dict(),
                                                    "seed": seed})
        (work / "manifest.csv").write_text(manifest_text(
            manifest_of(v.planted, len(v.planted.y), args.clean, seed)))
        store = work / "store"
        dormant("store", "add", str(store), "victim", str(ckpt), "--manifest",
                str(work / "manifest.csv"))
        dormant("inspect", "--store", str(store), "--model", "victim", "--dataset", data,
                "--share", str(args.share), "--seed", str(seed), "--out", str(work / "report"),
                "--device", args.device)
        rec = json.loads((work / "report" / "inspection.json").read_text())
        poisons, camo = set(v.planted.poisons.tolist()), set(v.planted.camouflage.tolist())
        kinds = {"poison": poisons, "camouflage": camo}
        by_kind = {}
        for kind, ids in kinds.items():
            mine = [s for s in rec["samples"] if s["id"] in ids]
            by_kind[kind] = {"sampled": len(mine),
                             **{d: sum(s[d] for s in mine) for d in rec["detectors"]}}
        row = {"seed": seed, "share": args.share, "sampled": rec["sampled"],
               "contributors": rec["contributors"], "kinds": by_kind,
               "detectors": rec["detectors"], "status": "ok", "method": "inspect",
               "condition": "camouflage victim"}
        with log.open("a") as f:
            f.write(json.dumps(row) + "\n")
        shares = {r["contributor"]: {d: round(100 * x, 1) for d, x in r["share"].items()}
                  for r in rec["contributors"]}
        print(f"seed {seed}: {shares}; malicious sampled {by_kind}", flush=True)


if __name__ == "__main__":
    main()
