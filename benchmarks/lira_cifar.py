"""LiRA's strength against its published figures (issue 25): Carlini et al. (IEEE S&P 2022)
report, on CIFAR-10 with WRN-28-2 and 16 shadow models, online LiRA with a fixed variance at
AUC 0.686 and 5.93% TPR at 0.1% FPR. This trains a target and 16 shadows on random halves
of the CIFAR-10 training set with their recipe (SGD, lr 0.1, momentum 0.9, weight decay
5e-4, batch 256, flips and 4-pixel shifts, 100 epochs), scores the target's pool with
``dormant.experiments.shadows.membership_audit`` and prints our figures beside theirs.

- **With a GPU** (``--setting full``, the default where CUDA is present): the whole setting,
  except that the model is ``resnet18`` (dormant has no WRN-28-2; a larger model memorises
  more, so expect a somewhat stronger attack, not a weaker one).
- **On a CPU** (``--setting reduced``, the default there): a pool of 2,000 images, 8 shadows,
  ``cnn-small`` and 20 epochs, which finishes in minutes; its numbers say the code runs end
  to end, not how strong LiRA is. The JSON says which setting ran.

    .venv/bin/python benchmarks/lira_cifar.py [--setting full|reduced] [--data-root DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from dormant.data.sources import default_cache_dir, load_dataset
from dormant.engine import Recipe, fit
from dormant.engine.device import resolve_device
from dormant.experiments.shadows import membership_audit
from dormant.models import ModelSpec, create_model
from dormant.store import ModelCache

PUBLISHED = {"auc": 0.686, "tpr_at_0.1pct": 0.0593, "shadows": 16, "model": "WRN-28-2",
             "source": "Carlini et al. 2022, online LiRA, fixed variance"}
SETTINGS = {
    "full": {"pool": 50_000, "shadows": 16, "model": "resnet18", "epochs": 100},
    "reduced": {"pool": 2_000, "shadows": 8, "model": "cnn-small", "epochs": 20},
}
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"


def recipe(pool: int, epochs: int) -> Recipe:
    half, batch = pool // 2, 256
    return Recipe(steps=math.ceil(epochs * half / batch), lr=0.1, optimizer="sgd",
                  momentum=0.9, weight_decay=5e-4, batch_size=batch, augment="flip-crop",
                  pad=4)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--setting", choices=sorted(SETTINGS), default=None)
    ap.add_argument("--data-root", type=Path, default=SHARED)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    device = resolve_device("auto")
    name = args.setting or ("full" if device.type == "cuda" else "reduced")
    s = SETTINGS[name]
    # the project's machines hold CIFAR-10 as a JPEG export (lossy: quality 75) rather than
    # torchvision's pickles
    jpeg = args.data_root / "cifar10-jpeg.tar.gz"
    ds = (load_dataset(f"imagefolder:{jpeg}", cache_dir=default_cache_dir()) if jpeg.is_file()
          else load_dataset("cifar10", root=args.data_root, cache_dir=default_cache_dir()))
    x, y = ds.x_train.to(device), ds.y_train.to(device)
    g = torch.Generator().manual_seed(args.seed)
    pool = torch.randperm(len(ds.y_train), generator=g)[:s["pool"]]
    target_in = np.zeros(len(pool), bool)
    target_in[torch.randperm(len(pool), generator=g)[:len(pool) // 2].numpy()] = True
    spec = ModelSpec(s["model"], 3, 10, 32)
    rec = recipe(len(pool), s["epochs"])
    t0 = time.perf_counter()
    target = create_model(spec, seed=10_000 + args.seed)
    fit(target, x, y, pool[torch.as_tensor(target_in)].to(device), rec,
        generator=torch.Generator().manual_seed(10_000 + args.seed))
    t_target = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = membership_audit(target, x, y, pool.to(device), target_in, spec, rec,
                           shadows=s["shadows"], seed=args.seed,
                           cache=ModelCache(default_cache_dir() / "lira-cifar"),
                           fingerprint=ds.fingerprint)
    online = out["lira_online"]
    print(json.dumps({
        "setting": name, "device": device.type, **s, "steps": rec.steps,
        "queries": out["queries"], "global_variance": out["global_variance"],
        "ours": {"auc": round(online["auc"], 4), "tpr_at_1pct": online["tpr_at_1pct"],
                 "tpr_at_0.1pct": online["tpr_at_0.1pct"]},
        "published": PUBLISHED,
        "ratio_auc": round(online["auc"] / PUBLISHED["auc"], 3),
        "ratio_tpr_at_0.1pct": round(online["tpr_at_0.1pct"] / PUBLISHED["tpr_at_0.1pct"], 3),
        "loss_attack": {k: out["loss"][k] for k in ("auc", "tpr_at_1pct", "tpr_at_0.1pct")},
        "data": ds.name,
        "seconds": {"target": round(t_target, 1), "shadows_and_scores":
                    round(time.perf_counter() - t0, 1)},
        "note": None if name == "full" else
        "reduced CPU setting: it shows the pipeline runs, not LiRA's strength",
    }))


if __name__ == "__main__":
    main()
