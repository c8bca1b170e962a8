"""Training images/second: the engine's ``fit`` against a usual torchvision DataLoader loop.

Both sides train a fresh model (same seed) with Adam, batch 128 and the same augmentation; the
reference draws per-sample PIL transforms through a ``DataLoader``. Rounds alternate engine and
reference so that load from other processes hits both; the best round of each is reported.
Prints a JSON list (one object per case) to stdout; progress goes to stderr.

    .venv/bin/python benchmarks/train_throughput.py [--quick] [--cases a,b] [--workers N]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader
from torchvision import transforms

from dormant.data.sources import load_dataset
from dormant.engine import Recipe, autocast, fit, prepare_model, resolve_device
from dormant.models import ModelSpec, create_model

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
BATCH = 128


@dataclass(frozen=True)
class Case:
    model: str
    dataset: str
    augment: str
    pad: int
    lr: float
    steps: int  # timed steps per round on CPU; --quick divides, CUDA multiplies
    rounds: int
    warmup: int  # untimed steps before each round: refills caches and the loader's queue


CASES = {
    # recipes as in dormant.experiments.profiles: MNIST crop pad 2, CIFAR flip-crop pad 4
    "cnn-small-mnist": Case("cnn-small", "mnist", "crop", 2, 1e-3, steps=150, rounds=3, warmup=5),
    "resnet18-cifar10": Case(
        "resnet18", f"imagefolder:{SHARED / 'cifar10-jpeg.tar.gz'}", "flip-crop", 4, 1e-4,
        steps=6, rounds=2, warmup=1,
    ),
}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class PilImages(torch.utils.data.Dataset):
    """As torchvision.datasets.MNIST/CIFAR10 do: uint8 arrays in, one PIL image per item."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, transform: Callable) -> None:
        hwc = x.permute(0, 2, 3, 1).numpy()
        self.x = np.ascontiguousarray(hwc[..., 0] if hwc.shape[-1] == 1 else hwc)
        self.y = y.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(Image.fromarray(self.x[i])), self.y[i]


def timed(device: torch.device, run: Callable[[], None], images: int) -> float:
    """Images/second of ``run``; syncs CUDA, whose kernels are still queued when calls return."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    run()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return images / (time.perf_counter() - t0)


def engine_round(model: nn.Module, x: torch.Tensor, y: torch.Tensor, case: Case, steps: int,
                 gen: torch.Generator) -> float:
    recipe = Recipe(steps=case.warmup, lr=case.lr, batch_size=BATCH, augment=case.augment,
                    pad=case.pad)
    ids = torch.arange(len(x), device=x.device)
    fit(model, x, y, ids, recipe, generator=gen)
    run = recipe.with_(steps=steps)
    return timed(x.device, lambda: fit(model, x, y, ids, run, generator=gen), steps * BATCH)


def reference_loop(model: nn.Module, x: torch.Tensor, y: torch.Tensor, case: Case, total: int,
                   device: torch.device, workers: int) -> Callable[[int], None]:
    """``train(n)`` runs n steps of the textbook loop, keeping its loader alive between calls."""
    crop = transforms.RandomCrop(x.shape[-1], padding=case.pad, padding_mode="reflect")
    flip = [transforms.RandomHorizontalFlip()] if case.augment == "flip-crop" else []
    loader = DataLoader(
        PilImages(x, y, transforms.Compose([crop, *flip, transforms.ToTensor()])),
        batch_size=BATCH, shuffle=True, num_workers=workers, drop_last=True,
        pin_memory=device.type == "cuda", persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(0),
    )
    # the usual way: model.to(device); on CUDA it gets the engine's layout and bf16 for fairness
    model = prepare_model(model, device) if device.type == "cuda" else model.to(device)
    opt, sched = Recipe(steps=total, lr=case.lr).build(model.parameters())

    def endless() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            yield from loader

    batches = endless()

    def train(n: int) -> None:
        model.train()
        for _ in range(n):
            xb, yb = next(batches)
            xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
            if device.type == "cuda":
                xb = xb.contiguous(memory_format=torch.channels_last)
            opt.zero_grad(set_to_none=True)
            with autocast(device):
                loss = F.cross_entropy(model(xb), yb)
            loss.backward()
            opt.step()
            sched.step()

    return train


def run_case(name: str, case: Case, device: torch.device, quick: bool, workers: int) -> dict:
    t0 = time.perf_counter()
    ds = load_dataset(case.dataset, root=SHARED if case.dataset == "mnist" else None)
    log(f"{name}: {len(ds.x_train)} train images loaded in {time.perf_counter() - t0:.1f}s")
    steps = max(3, case.steps // 3) if quick else case.steps
    steps *= 5 if device.type == "cuda" else 1
    spec = ModelSpec(case.model, ds.x_train.shape[1], len(ds.classes), ds.x_train.shape[2])
    x, y = ds.x_train.to(device), ds.y_train.to(device)
    eng_model = create_model(spec, seed=0)
    gen = torch.Generator().manual_seed(0)
    ref_train = reference_loop(create_model(spec, seed=0), ds.x_train, ds.y_train, case,
                               case.rounds * (case.warmup + steps), device, workers)
    eng, ref = [], []
    for r in range(case.rounds):
        eng.append(engine_round(eng_model, x, y, case, steps, gen))
        ref_train(case.warmup)
        ref.append(timed(device, lambda: ref_train(steps), steps * BATCH))
        log(f"{name} round {r + 1}/{case.rounds}: engine {eng[-1]:.1f} img/s, "
            f"reference {ref[-1]:.1f} img/s (load avg {os.getloadavg()[0]:.2f})")
    cuda = ", bf16 autocast + channels_last + pinned non_blocking copies" * (device.type == "cuda")
    flip = " + RandomHorizontalFlip" * (case.augment == "flip-crop")
    return {
        "case": name,
        "engine_ips": round(max(eng), 1),
        "reference_ips": round(max(ref), 1),
        "ratio": round(max(eng) / max(ref), 3),
        "device": str(device),
        "steps": steps,
        "rounds": case.rounds,
        "warmup_steps": case.warmup,
        "batch_size": BATCH,
        "threads": torch.get_num_threads(),
        "engine_rounds_ips": [round(v, 1) for v in eng],
        "reference_rounds_ips": [round(v, 1) for v in ref],
        # each round's two sides ran back to back, so these ratios share their noise
        "round_ratios": [round(e / r, 3) for e, r in zip(eng, ref, strict=True)],
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "reference": (
            f"torchvision-style Dataset of uint8 arrays -> PIL -> RandomCrop(pad {case.pad}, "
            f"reflect){flip} + ToTensor per sample; DataLoader(batch {BATCH}, shuffle=True, "
            f"num_workers={workers}, persistent_workers); Adam + cosine LambdaLR as the "
            f"engine's recipe{cuda}"
        ),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a third of the timed steps")
    p.add_argument("--cases", default=",".join(CASES), help=f"comma-separated: {', '.join(CASES)}")
    # one worker per core is the usual choice; the main process's threads share those cores
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                   help="reference DataLoader workers (default: 2, or fewer cores)")
    args = p.parse_args()
    names = [n.strip() for n in args.cases.split(",") if n.strip()]
    unknown = [n for n in names if n not in CASES]
    if unknown:
        p.error(f"unknown case(s) {', '.join(unknown)}; choose from {', '.join(CASES)}")
    if not SHARED.is_dir():
        sys.exit(f"benchmark data not found: {SHARED} is missing")
    device = resolve_device("auto")
    log(f"device {device}, {torch.get_num_threads()} threads, "
        f"load avg {os.getloadavg()[0]:.2f} (other processes skew timings)")
    with contextlib.redirect_stdout(sys.stderr):  # stdout carries only the JSON
        results = [run_case(n, CASES[n], device, args.quick, args.workers) for n in names]
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
