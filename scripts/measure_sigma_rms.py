"""Measure what the weight-space remedies' paper defaults mean on models of different sizes.

Prints one JSON object:

- ``sigma_rms``: for the CIFAR ResNet-18 (CIFAR-10), ``cnn-small`` (MNIST) and ``mlp``
  (digits), at initialisation and after training, the seed's weight-distortion sigma = 0.02
  as a multiple of each tensor's RMS, per tensor and per group (with each group's share of
  the weights), and the relative sigma that moves the conv/linear weights by the same L2
  distance as the absolute 0.02 (``sigma_rel_l2``), the default of ``sigma_mode: relative``.
- ``push``: the per-weight push of ``weight_dist_reg`` (RMS over weights of the penalty's
  gradient) and of ``cbft`` (the barrier gradient against the retain CE gradient at
  theta = theta_pre) on ResNet-18 and ``cnn-small``, under the seed's literal forms and the
  scale-free defaults.

Training follows each model's recipe (ResNet-18: the seed's Adam 1e-4, wd 1e-4, cosine over
300 epochs, batch 128, flip-crop) for at most ``--resnet-seconds`` / ``--small-seconds`` of
wall time; the JSON says how many steps that was. CPU only, one thread by default.

    nice -n 10 python scripts/measure_sigma_rms.py --data-root ../shared/datasets \\
        --out runs/sigma_rms.json
"""

from __future__ import annotations

import argparse
import json
import math
import re
import time
from pathlib import Path

import torch

from dormant.data import load_dataset
from dormant.engine import Recipe, evaluate, fit, to_float
from dormant.models import ModelSpec, create_model
from dormant.unlearn import make_hparams
from dormant.unlearn.cbft import balanced_grads, cbft_terms
from dormant.unlearn.perturb import noise_scales
from dormant.unlearn.weight_dist_reg import distance_penalty
from dormant.unlearn.weight_distortion import PAPER_SIGMA


def group_of(model_name: str, param: str) -> str:
    if model_name == "resnet18":
        m = re.match(r"layers\.(\d+)\.", param)
        if m:
            return f"layer{int(m.group(1)) // 2 + 1}"
        return "stem" if param.startswith(("conv1", "bn1")) else "head"
    return param.rsplit(".", 1)[0]


def sigma_table(model_name: str, model: torch.nn.Module) -> dict:
    scales = noise_scales(model)
    params = dict(model.named_parameters())
    total = sum(p.numel() for p in params.values())
    tensors, groups = [], {}
    for name, s in scales.items():
        p = params[name].detach().float()
        rms = p.pow(2).mean().sqrt().item()
        row = {"name": name, "kind": s.kind, "n": p.numel(), "rms": rms,
               "sigma_over_rms": PAPER_SIGMA / rms if rms > 0 else None}
        if s.kind == "filter":
            f = (PAPER_SIGMA / s.rms.flatten().clamp_min(1e-12)).sort().values
            row["per_filter_sigma_over_rms"] = {
                "min": f[0].item(), "median": f[len(f) // 2].item(), "max": f[-1].item()}
        tensors.append(row)
        key = "norm" if s.kind == "norm" else group_of(model_name, name)
        g = groups.setdefault(key, {"n": 0, "sq": 0.0, "ratios": []})
        g["n"] += p.numel()
        g["sq"] += p.pow(2).sum().item()
        if row["sigma_over_rms"] is not None:
            g["ratios"].append(row["sigma_over_rms"])
    out_groups = {}
    for key, g in groups.items():
        rms = math.sqrt(g["sq"] / g["n"])
        out_groups[key] = {
            "share": g["n"] / total, "n": g["n"], "rms": rms,
            "sigma_over_rms": PAPER_SIGMA / rms if rms > 0 else None,
            "tensor_range": [min(g["ratios"]), max(g["ratios"])] if g["ratios"] else None}
    rel = [r for r in tensors if r["kind"] != "norm"]
    n_rel = sum(r["n"] for r in rel)
    norm_w = math.sqrt(sum(r["n"] * r["rms"] ** 2 for r in rel))
    weighted = sum(r["n"] * r["sigma_over_rms"] for r in rel if r["sigma_over_rms"]) / n_rel
    return {"params": total, "relative_params": n_rel,
            "sigma_rel_l2": PAPER_SIGMA * math.sqrt(n_rel) / norm_w,
            "sigma_over_rms_weighted_mean": weighted,
            "groups": out_groups, "tensors": tensors}


def train(model, ds, recipe: Recipe, seconds: float, seed: int = 0) -> dict:
    deadline = time.perf_counter() + seconds
    ids = torch.arange(len(ds.y_train))
    res = fit(model, ds.x_train, ds.y_train, ids, recipe,
              generator=torch.Generator().manual_seed(seed),
              hook=lambda _s, _m: time.perf_counter() > deadline)
    test = torch.arange(min(2000, len(ds.y_test)))
    acc = evaluate(model, ds.x_test, ds.y_test, test).acc
    return {"steps": res.steps, "seconds": round(res.seconds, 1),
            "epochs": round(res.steps * recipe.batch_size / len(ids), 3),
            "recipe": {"lr": recipe.lr, "weight_decay": recipe.weight_decay,
                       "batch_size": recipe.batch_size, "schedule_steps": recipe.steps,
                       "augment": recipe.augment},
            "test_acc_first_2000": acc}


def per_weight_rms(grads) -> float:
    n = sum(g.numel() for g in grads)
    return math.sqrt(sum(g.double().pow(2).sum().item() for g in grads) / n)


def dist_reg_push(model, seed: int = 0) -> dict:
    """RMS over weights of alpha * d(penalty)/d(theta), theta = theta_pre + 1e-3 noise (any
    displacement well above the seed's epsilon gives the same numbers)."""
    g = torch.Generator().manual_seed(seed)
    anchor = [p.detach().clone() for p in model.parameters()]
    params = [(a + 1e-3 * torch.randn(a.shape, generator=g)).requires_grad_() for a in anchor]
    out = {"params": sum(a.numel() for a in anchor)}
    for form in ("seed", "per_weight"):
        alpha = make_hparams("weight_dist_reg", {"form": form}).alpha
        grads = torch.autograd.grad(alpha * distance_penalty(params, anchor, form), params)
        out[form] = {"alpha": alpha, "push_per_weight": per_weight_rms(grads)}
    return out


def cbft_push(model, ds, seed: int = 0) -> dict:
    """At theta = theta_pre (the start of unlearning): the retain CE gradient, the barrier's
    gradient, and what each form adds per weight; class 0 images stand in for a forget set."""
    g = torch.Generator().manual_seed(seed)
    forget = (ds.y_train == 0).nonzero().flatten()
    retain = (ds.y_train != 0).nonzero().flatten()
    b = torch.cat([retain[torch.randperm(len(retain), generator=g)[:128]],
                   forget[torch.randperm(len(forget), generator=g)[:128]]])
    x, y = to_float(ds.x_train[b]), ds.y_train[b]
    pre = {k: v.detach().clone() for k, v in model.state_dict().items()}
    params = list(model.parameters())
    model.train()
    ce, barrier = cbft_terms(model, pre, x, y, 128, 50.0)
    g_ce = torch.autograd.grad(ce, params, retain_graph=True)
    g_b = torch.autograd.grad(barrier, params, retain_graph=True)
    norm = lambda gs: math.sqrt(sum(t.double().pow(2).sum().item() for t in gs))  # noqa: E731
    seed_alpha = make_hparams("cbft", {"form": "seed"}).alpha
    bal_alpha = make_hparams("cbft").alpha
    _, c = balanced_grads(ce, barrier, params, bal_alpha)
    model.load_state_dict(pre)  # the train-mode forward moved BatchNorm's running statistics
    return {
        "params": sum(p.numel() for p in params),
        "retain_ce": ce.item(), "retain_grad_per_weight": per_weight_rms(g_ce),
        "seed": {"alpha": seed_alpha,
                 "push_per_weight": seed_alpha * per_weight_rms(g_b),
                 "barrier_over_retain_grad": seed_alpha * norm(g_b) / norm(g_ce)},
        "balanced": {"alpha": bal_alpha, "scale": c.item(),
                     "push_per_weight": c.item() * per_weight_rms(g_b),
                     "barrier_over_retain_grad": c.item() * norm(g_b) / norm(g_ce)},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-root", default=str(Path(__file__).resolve().parents[2]
                                               / "shared" / "datasets"))
    ap.add_argument("--cache", default=None, help="dataset cache (default $DORMANT_CACHE)")
    ap.add_argument("--resnet-seconds", type=float, default=240.0)
    ap.add_argument("--small-seconds", type=float, default=60.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="also write the JSON here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    root = Path(args.data_root)

    cifar = load_dataset(f"imagefolder:{root / 'cifar10-jpeg.tar.gz'}", cache_dir=args.cache)
    mnist = load_dataset("mnist", root=root, cache_dir=args.cache)
    digits = load_dataset("digits", cache_dir=args.cache)
    setups = [
        # the seed's pretraining recipe; its 300-epoch cosine, of which only the start runs
        ("resnet18", cifar, Recipe(steps=300 * 391, lr=1e-4, weight_decay=1e-4),
         args.resnet_seconds),
        # dormant's MNIST profile (30 epochs, Adam 1e-3, crop)
        ("cnn-small", mnist, Recipe(steps=30 * 469, lr=1e-3, augment="crop", pad=2,
                                    final_lr=1e-5), args.small_seconds),
        # dormant's digits profile (60 epochs, Adam 1e-3)
        ("mlp", digits, Recipe(steps=60 * 15, lr=1e-3, augment="none", final_lr=1e-5),
         args.small_seconds),
    ]
    result = {"sigma": PAPER_SIGMA, "threads": args.threads, "sigma_rms": {}, "push": {}}
    for name, ds, recipe, seconds in setups:
        c, h, _ = ds.x_train.shape[1:]
        model = create_model(ModelSpec(name, c, len(ds.classes), h), seed=0)
        entry = {"dataset": ds.name, "init": sigma_table(name, model)}
        entry["training"] = train(model, ds, recipe, seconds)
        entry["trained"] = sigma_table(name, model)
        result["sigma_rms"][name] = entry
        if name in ("resnet18", "cnn-small"):
            result["push"][name] = {"weight_dist_reg": dist_reg_push(model),
                                    "cbft": cbft_push(model, ds)}
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
