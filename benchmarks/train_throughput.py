"""Training images/second: the engine's ``fit`` against a usual torchvision DataLoader loop.

Prints a JSON list (one object per case) to stdout; progress goes to stderr.
Run from the project root: ``.venv/bin/python benchmarks/train_throughput.py [--quick]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
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
# a 2-core box: two workers is what the PyTorch examples use, and more would only time-share
WORKERS = 2


@dataclass(frozen=True)
class Case:
    model: str
    dataset: str
    augment: str
    pad: int
    lr: float
    steps: int  # timed steps on CPU; --quick divides, CUDA multiplies
    warmup: int = 2


CASES = {
    # recipes as in dormant.experiments.profiles: MNIST crop pad 2, CIFAR flip-crop pad 4
    "cnn-small-mnist": Case("cnn-small", "mnist", "crop", 2, 1e-3, steps=100, warmup=5),
    "resnet18-cifar10": Case(
        "resnet18", f"imagefolder:{SHARED / 'cifar10-jpeg.tar.gz'}", "flip-crop", 4, 1e-4, steps=10
    ),
}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class PilImages(torch.utils.data.Dataset):
    """torchvision.datasets.MNIST/CIFAR10 style: uint8 arrays in, one PIL image per item."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, transform: transforms.Compose) -> None:
        hwc = x.permute(0, 2, 3, 1).numpy()
        self.x = np.ascontiguousarray(hwc[..., 0] if hwc.shape[-1] == 1 else hwc)
        self.y = y.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(Image.fromarray(self.x[i])), self.y[i]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def engine_ips(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, case: Case, steps: int
) -> float:
    recipe = Recipe(steps=case.warmup, lr=case.lr, batch_size=BATCH, augment=case.augment,
                    pad=case.pad)
    ids = torch.arange(len(x), device=x.device)
    gen = torch.Generator().manual_seed(0)
    fit(model, x, y, ids, recipe, generator=gen)
    sync(x.device)
    # not FitResult.seconds: on CUDA fit returns before queued kernels finish
    t0 = time.perf_counter()
    fit(model, x, y, ids, recipe.with_(steps=steps), generator=gen)
    sync(x.device)
    return steps * BATCH / (time.perf_counter() - t0)


def reference_ips(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, case: Case, steps: int,
    device: torch.device,
) -> float:
    crop = transforms.RandomCrop(x.shape[-1], padding=case.pad, padding_mode="reflect")
    flip = [transforms.RandomHorizontalFlip()] if case.augment == "flip-crop" else []
    tf = transforms.Compose([crop, *flip, transforms.ToTensor()])
    loader = DataLoader(
        PilImages(x, y, tf), batch_size=BATCH, shuffle=True, num_workers=WORKERS,
        drop_last=True, pin_memory=device.type == "cuda", persistent_workers=True,
        generator=torch.Generator().manual_seed(0),
    )
    model = prepare_model(model, device)
    opt, sched = Recipe(steps=case.warmup + steps, lr=case.lr).build(model.parameters())
    model.train()
    batches = iter(loader)

    def step() -> None:
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

    for _ in range(case.warmup):
        step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return steps * BATCH / (time.perf_counter() - t0)


def run(name: str, case: Case, device: torch.device, quick: bool) -> dict:
    root = SHARED if case.dataset == "mnist" else None
    t0 = time.perf_counter()
    ds = load_dataset(case.dataset, root=root)
    log(f"{name}: loaded {len(ds.x_train)} train images in {time.perf_counter() - t0:.1f}s")
    steps = max(3, case.steps // 3) if quick else case.steps
    if device.type == "cuda":
        steps *= 5
    c, h = ds.x_train.shape[1], ds.x_train.shape[2]
    spec = ModelSpec(case.model, c, len(ds.classes), h)

    def fresh() -> nn.Module:
        return create_model(spec, seed=0)

    eng = engine_ips(fresh(), ds.x_train.to(device), ds.y_train.to(device), case, steps)
    log(f"{name}: engine {eng:.0f} img/s")
    ref = reference_ips(fresh(), ds.x_train, ds.y_train, case, steps, device)
    log(f"{name}: reference {ref:.0f} img/s")
    cuda_note = ", bf16 autocast + channels_last + pinned non_blocking copies" * (
        device.type == "cuda"
    )
    return {
        "case": name,
        "engine_ips": round(eng, 1),
        "reference_ips": round(ref, 1),
        "ratio": round(eng / ref, 3),
        "device": str(device),
        "steps": steps,
        "warmup_steps": case.warmup,
        "batch_size": BATCH,
        "threads": torch.get_num_threads(),
        "reference": (
            f"per-sample PIL transforms ({case.augment} as RandomCrop(reflect)"
            f"{' + RandomHorizontalFlip' if case.augment == 'flip-crop' else ''} + ToTensor), "
            f"DataLoader(shuffle=True, num_workers={WORKERS}, persistent_workers=True){cuda_note}"
        ),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="about a third of the timed steps")
    p.add_argument("--cases", default=",".join(CASES), help=f"comma-separated: {', '.join(CASES)}")
    args = p.parse_args()
    names = [n.strip() for n in args.cases.split(",") if n.strip()]
    unknown = [n for n in names if n not in CASES]
    if unknown:
        p.error(f"unknown case(s) {', '.join(unknown)}; choose from {', '.join(CASES)}")
    if not SHARED.is_dir():
        sys.exit(f"benchmark data not found: {SHARED} is missing")
    device = resolve_device("auto")
    with contextlib.redirect_stdout(sys.stderr):  # keep stdout pure JSON
        results = [run(n, CASES[n], device, args.quick) for n in names]
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
