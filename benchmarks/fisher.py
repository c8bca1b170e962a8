"""Empirical diagonal Fisher: ``engine.grads.diag_fisher`` (vmap) against a batch-size-1 loop.

The reference is the usual way: eval mode, one forward and backward per sample with autograd,
accumulating the squared gradients. Both sides run once untimed (warm-up), then ``--rounds``
alternating timed rounds; the best of each is reported together with the largest absolute
difference between the two Fisher estimates. Prints one JSON object to stdout; progress goes
to stderr. Thread count: torch's default unless ``--threads`` is given.

    .venv/bin/python benchmarks/fisher.py --model cnn-small --n 512 [--data digits]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from dormant.data.sources import load_dataset
from dormant.engine import prepare_model, resolve_device, to_float
from dormant.engine.grads import diag_fisher
from dormant.models import ModelSpec, create_model

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
DATA = {
    "digits": "the first n sklearn digits (1x8x8, real)",
    "mnist": "the first n MNIST training images (1x28x28, real, from ../shared/datasets)",
    "random28": "n random uint8 images of 1x28x28 with random labels (seed 0)",
}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def images(kind: str, n: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(uint8 images, labels, number of classes), n of them."""
    if kind == "random28":
        g = torch.Generator().manual_seed(0)
        return (torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=g),
                torch.randint(0, 10, (n,), generator=g), 10)
    ds = load_dataset(kind, root=SHARED if kind == "mnist" else None)
    if len(ds.x_train) < n:
        sys.exit(f"--n {n} is more than the {len(ds.x_train)} {kind} training images")
    return ds.x_train[:n], ds.y_train[:n], len(ds.classes)


def loop_fisher(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """The reference: batch size 1, autograd, mean of squared gradients."""
    model.eval()
    total = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for i in range(len(x)):
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(to_float(x[i : i + 1])), y[i : i + 1]).backward()
        for n, p in model.named_parameters():
            total[n] += p.grad.square()
    return {n: v / len(x) for n, v in total.items()}


def timed(device: torch.device, run: Callable[[], dict]) -> tuple[float, dict]:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = run()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=["cnn-small", "mlp", "resnet18"], default="cnn-small")
    p.add_argument("--n", type=int, default=512, help="images in the Fisher (default 512)")
    p.add_argument("--data", choices=sorted(DATA), default="digits")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--rounds", type=int, default=2, help="timed rounds per side (best is kept)")
    p.add_argument("--chunk", type=int, default=None, help="vmap chunk (default: automatic)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = p.parse_args()
    if args.n < 1 or args.rounds < 1:
        p.error("--n and --rounds must be positive")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    x, y, classes = images(args.data, args.n)
    x, y = x.to(device), y.to(device)
    spec = ModelSpec(args.model, x.shape[1], classes, x.shape[-1])
    model = prepare_model(create_model(spec, seed=0), device)
    ids = torch.arange(len(x), device=device)
    log(f"{args.model} on {DATA[args.data]}, device {device}, {torch.get_num_threads()} threads, "
        f"load avg {os.getloadavg()[0]:.2f} (other processes skew timings)")

    def vmap_side() -> dict:
        return diag_fisher(model, x, y, ids, batch_size=args.chunk)

    def loop_side() -> dict:
        return loop_fisher(model, x, y)

    warm = min(len(x), 16)  # untimed: allocator, kernels and lazy inits on both sides
    diag_fisher(model, x[:warm], y[:warm], ids[:warm], batch_size=args.chunk)
    loop_fisher(model, x[:warm], y[:warm])
    vm, lp = [], []
    for r in range(args.rounds):
        t, fisher_vmap = timed(device, vmap_side)
        vm.append(t)
        t, fisher_loop = timed(device, loop_side)
        lp.append(t)
        log(f"round {r + 1}/{args.rounds}: vmap {vm[-1]:.3f}s, loop {lp[-1]:.3f}s")
    diff = max((fisher_vmap[n] - fisher_loop[n]).abs().max().item() for n in fisher_loop)
    scale = max(v.abs().max().item() for v in fisher_loop.values())
    print(json.dumps({
        "case": f"{args.model}-{args.data}",
        "n": args.n,
        "vmap_seconds": round(min(vm), 4),
        "loop_seconds": round(min(lp), 4),
        "ratio": round(min(lp) / min(vm), 2),
        "max_abs_diff": diff,
        "max_fisher_entry": scale,
        "params": sum(q.numel() for q in model.parameters()),
        "data": DATA[args.data],
        "device": str(device),
        "threads": torch.get_num_threads(),
        "rounds": args.rounds,
        "chunk": args.chunk or "auto",
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }))


if __name__ == "__main__":
    main()
