"""Per-sample gradients and diagonal Fisher information with ``torch.func`` (vmap over samples).

Everything runs with eval-mode semantics: BatchNorm uses its running statistics (passed as
buffers to ``functional_call``), nothing updates them, and no augmentation is applied. Results
are float32 on the model's device. Work is chunked over samples so that memory stays bounded;
the chunk size changes speed and memory only, never the result beyond float rounding.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vjp, vmap

from dormant.engine.device import to_float

Grads = dict[str, torch.Tensor]

GRAD_BUDGET = 2**26
"""Float32 gradient entries one vmap chunk may hold at once off CUDA (256 MiB); on CUDA a
sixteenth of the free memory (a chunk holds a few copies: gradients, squares, sums)."""
MAX_CHUNK = 256
CPU_MAX_CHUNK = 32
"""Off CUDA, larger chunks only cost cache misses: cnn-small's expected Fisher on 512 MNIST
images took 2.7-3.3 s of CPU time with chunks of 16, 32 or 64 and 5.2 s with 256 (1 thread)."""


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _split(model: nn.Module) -> tuple[Grads, Grads]:
    """Trainable parameters (differentiated) and everything else the forward pass reads."""
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    consts = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}
    consts.update({n: b.detach() for n, b in model.named_buffers()})
    return params, consts


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _start(model: nn.Module, reduce: str) -> tuple[torch.device, Grads, Grads, Grads]:
    """The device, the differentiated parameters, the constants, and float32 zero sums."""
    if reduce not in ("mean", "sum"):
        raise ValueError(f"reduce must be 'mean' or 'sum', got {reduce!r}")
    device = _device(model)
    params, consts = _split(model)
    total = {n: torch.zeros(p.shape, dtype=torch.float32, device=device)
             for n, p in params.items()}
    return device, params, consts, total


def _sample_loss(model: nn.Module, consts: Grads):
    def loss(params: Grads, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = functional_call(model, (params, consts), (x.unsqueeze(0),))
        return F.cross_entropy(logits, y.unsqueeze(0))

    return loss


def _sample_expected_fisher(model: nn.Module, consts: Grads):
    """sum_k p(k|x) * (grad CE(f(x), k))^2 for one sample, from one forward pass: the
    gradient of CE(z, k) w.r.t. the logits z is softmax(z) - e_k, so every class's parameter
    gradient is one vector-Jacobian product of the same forward. Classes are visited one after
    another (traced once per chunk, not per sample) so a chunk holds one gradient per sample,
    not one per (sample, class)."""

    def fisher(params: Grads, x: torch.Tensor) -> Grads:
        def logits_of(p: Grads) -> torch.Tensor:
            return functional_call(model, (p, consts), (x.unsqueeze(0),)).squeeze(0)

        logits, pull = vjp(logits_of, params)
        prob = logits.float().softmax(-1)
        eye = torch.eye(len(prob), dtype=prob.dtype, device=prob.device)
        total: Grads = {}
        for k in range(len(prob)):
            (g,) = pull((prob - eye[k]).to(logits.dtype))
            for n, t in g.items():
                term = prob[k] * t.float().square()
                total[n] = term if k == 0 else total[n] + term
        return total

    return fisher


def per_sample_grads(
    model: nn.Module, xb: torch.Tensor, yb: torch.Tensor, *, chunk_size: int | None = None
) -> Grads:
    """Gradient of each sample's cross-entropy: ``{name: Tensor[B, *param.shape]}``.

    ``xb`` is a float batch already on the model's device; eval-mode semantics (see module).
    ``chunk_size`` bounds how many samples vmap processes at once (None: all of them).
    """
    params, consts = _split(model)
    fn = vmap(grad(_sample_loss(model, consts)), in_dims=(None, 0, 0), chunk_size=chunk_size)
    with _eval_mode(model):
        return fn(params, xb, yb)


def _auto_chunk(params: Grads, device: torch.device) -> int:
    numel = sum(p.numel() for p in params.values())
    budget, cap = GRAD_BUDGET, CPU_MAX_CHUNK
    if device.type == "cuda":
        budget, cap = torch.cuda.mem_get_info(device)[0] // 16 // 4, MAX_CHUNK
    return max(1, min(cap, budget // max(1, numel)))


def diag_fisher(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    ids: torch.Tensor,
    *,
    batch_size: int | None = None,
    kind: Literal["empirical", "expected"] = "empirical",
    reduce: Literal["mean", "sum"] = "mean",
) -> Grads:
    """Diagonal Fisher of ``model`` on ``x[ids]`` (x uint8 NCHW), one float32 tensor per
    trainable parameter.

    ``empirical``: squared per-sample CE gradients w.r.t. the true labels ``y``.
    ``expected`` (Golatkar et al. 2020): for each sample, sum over classes k of
    p(k|x) * (grad CE(f(x), k))^2, labels unused. ``reduce`` averages or sums over samples.
    ``batch_size`` is the vmap chunk (memory only); None picks one from ``GRAD_BUDGET``.
    """
    if kind not in ("empirical", "expected"):
        raise ValueError(f"kind must be 'empirical' or 'expected', got {kind!r}")
    device, params, consts, total = _start(model, reduce)
    ids = ids.to(x.device)
    if len(ids) == 0:
        return total
    with _eval_mode(model):
        if kind == "empirical":
            per = vmap(grad(_sample_loss(model, consts)), in_dims=(None, 0, 0))
        else:
            per = vmap(_sample_expected_fisher(model, consts), in_dims=(None, 0))
        chunk = batch_size or _auto_chunk(params, device)
        for start in range(0, len(ids), chunk):
            b = ids[start : start + chunk]
            xb = to_float(x[b]).to(device)
            if kind == "empirical":
                out = per(params, xb, y[b].to(device))
                out = {n: g.float().square_() for n, g in out.items()}  # vmap's own buffers
            else:
                out = per(params, xb)
            for n, v in out.items():
                total[n] += v.sum(0)
    if reduce == "mean":
        for v in total.values():
            v /= len(ids)
    return total


def batch_grad_importance(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    ids: torch.Tensor,
    *,
    batch_size: int = 128,
    reduce: Literal["mean", "sum"] = "mean",
) -> Grads:
    """SSD's importance (Foster et al. 2024): squared gradients of the *batch-mean* CE, one per
    mini-batch of ``x[ids]`` taken in the given order (last batch may be short), then averaged
    over batches (``mean``: (1/#batches) sum_b g_b^2, the original) or summed (``sum``: the
    seed paper's variant). Not a Fisher: a batch gradient squared is not a sum of per-sample
    squares, so the result depends on batch size and composition. Eval-mode semantics.
    """
    device, params, consts, total = _start(model, reduce)
    ids = ids.to(x.device)

    def batch_loss(p: Grads, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(functional_call(model, (p, consts), (xb,)), yb)

    g_fn = grad(batch_loss)
    with _eval_mode(model):
        for start in range(0, len(ids), batch_size):
            b = ids[start : start + batch_size]
            for n, g in g_fn(params, to_float(x[b]).to(device), y[b].to(device)).items():
                total[n] += g.float().square()
    batches = math.ceil(len(ids) / batch_size)
    if reduce == "mean" and batches:
        for v in total.values():
            v /= batches
    return total
