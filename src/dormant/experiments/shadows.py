"""Shadow models for per-example membership inference, shared: each is a content-addressed
artefact of the model cache, keyed by the data, the architecture, the recipe, the exact ids it
trains on and its seed. A second method, study or audit on the same pool asks for the same
keys and trains nothing; the missing ones train together as batched groups
(:func:`dormant.engine.group.fit_group`)."""

from __future__ import annotations

import hashlib
from dataclasses import asdict

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dormant.engine import Recipe
from dormant.engine.device import to_float
from dormant.engine.group import fit_group
from dormant.metrics.lira import scaled_logit
from dormant.models import ModelSpec, create_model
from dormant.store.cache import ModelCache, cache_key

GROUP = 16
"""Shadows trained as one batched model: LiRA's usual N, and what 2 CPU cores batch well."""


def _ids_hash(ids: torch.Tensor) -> str:
    return hashlib.sha256(np.asarray(ids.cpu(), dtype=np.int64).tobytes()).hexdigest()


def shadow_seed(seed: int, index: int) -> int:
    return seed * 100_003 + index


def shadow_key(fingerprint: str, spec: ModelSpec, recipe: Recipe, ids: torch.Tensor,
               seed: int) -> str:
    return cache_key(kind="shadow", data=fingerprint, spec=asdict(spec),
                     recipe=recipe.to_dict(), ids=_ids_hash(ids), seed=seed)


def train_shadows(x: torch.Tensor, y: torch.Tensor, pool: torch.Tensor, keep: np.ndarray,
                  spec: ModelSpec, recipe: Recipe, *, seed: int, cache: ModelCache,
                  fingerprint: str, group: int = GROUP, base: torch.Tensor | None = None,
                  only: list[int] | None = None, progress=None) -> list[nn.Module]:
    """One model per row of ``keep`` (models x pool), trained on ``base`` (ids every shadow
    trains on, e.g. a study's retain set) and ``pool[keep[m]]`` with seed
    ``shadow_seed(seed, m)``; loaded from ``cache`` where it was trained before. ``only``:
    just these rows (a worker's share; the others are left to other workers)."""
    rows = list(range(len(keep))) if only is None else list(only)
    ids = {m: pool[torch.as_tensor(keep[m])] for m in rows}
    if base is not None:
        ids = {m: torch.cat([base, i]) for m, i in ids.items()}
    seeds = {m: shadow_seed(seed, m) for m in rows}
    keys = [shadow_key(fingerprint, spec, recipe, ids[m], seeds[m]) for m in rows]

    def train(positions: list[int]) -> list[nn.Module]:
        out: list[nn.Module] = []
        for start in range(0, len(positions), group):
            chunk = [rows[p] for p in positions[start:start + group]]
            models = [create_model(spec, seed=seeds[m]) for m in chunk]
            fit_group(models, x, y, [ids[m] for m in chunk], recipe,
                      generators=[torch.Generator().manual_seed(seeds[m]) for m in chunk],
                      progress=progress, label=f"shadows {start + 1}-{start + len(chunk)} "
                                                f"of {len(positions)}")
            out += models
        return out

    return cache.build_models(keys, spec, x.device, train, {"kind": "shadow"})


def queries(recipe: Recipe) -> list[tuple[bool, int, int]]:
    """The augmented copies each example is queried with, as (flip, row shift, column shift):
    the identity, and the training augmentation's own moves (one-pixel shifts where it crops,
    mirrored copies where it flips), as LiRA queries CIFAR-10 with flips and shifts."""
    crops = recipe.augment != "none" and recipe.pad > 0
    shifts = [(0, 0), (1, 0), (-1, 0), (0, 1), (0, -1)] if crops else [(0, 0)]
    flips = [False, True] if recipe.augment == "flip-crop" else [False]
    return [(f, dr, dc) for f in flips for dr, dc in shifts]


def _moved(x: torch.Tensor, flip: bool, dr: int, dc: int) -> torch.Tensor:
    if flip:
        x = x.flip(3)
    if dr or dc:
        h, w = x.shape[2:]
        xp = F.pad(x, (1, 1, 1, 1), mode="reflect")
        x = xp[:, :, 1 + dr:1 + dr + h, 1 + dc:1 + dc + w]
    return x


@torch.no_grad()
def phis(models: list[nn.Module], x: torch.Tensor, y: torch.Tensor, ids: torch.Tensor,
         recipe: Recipe, batch: int = 1024) -> np.ndarray:
    """``(models, examples, queries)``: each model's logit-scaled confidence on each example
    of ``ids`` under each query (eval mode)."""
    qs = queries(recipe)
    out = np.zeros((len(models), len(ids), len(qs)))
    ids = ids.to(x.device)
    for mi, m in enumerate(models):
        was = m.training
        m.eval()
        for start in range(0, len(ids), batch):
            b = ids[start:start + batch]
            xb, yb = to_float(x[b]), y[b]
            for qi, q in enumerate(qs):
                out[mi, start:start + len(b), qi] = \
                    scaled_logit(m(_moved(xb, *q)), yb).cpu().numpy()
        m.train(was)
    return out


def membership_audit(target: nn.Module, x: torch.Tensor, y: torch.Tensor, pool: torch.Tensor,
                     target_in: np.ndarray, spec: ModelSpec, recipe: Recipe, *, shadows: int,
                     seed: int, cache: ModelCache, fingerprint: str, progress=None) -> dict:
    """LiRA (online and offline) and the loss-threshold attack against ``target`` on the
    same examples, the ``pool``; ``target_in`` says which of them ``target`` trained on. The
    ``shadows`` reference models come from the cache (trained once, on random halves of the
    pool drawn with ``seed``). Returns each attack's AUC and TPR at 1% and 0.1% FPR, the
    per-example LiRA scores, and the shadow count and variance rule behind them."""
    from dormant.metrics.lira import fit_gaussians, lira_scores, membership, roc_summary

    keep = membership(shadows, len(pool), seed)
    models = train_shadows(x, y, pool, keep, spec, recipe, seed=seed, cache=cache,
                           fingerprint=fingerprint, progress=progress)
    fit = fit_gaussians(phis(models, x, y, pool, recipe), keep)
    target_phi = phis([target], x, y, pool, recipe)[0]
    member = np.asarray(target_in, bool)
    out = {"shadows": shadows, "global_variance": fit.global_variance,
           "queries": len(queries(recipe)), "members": int(member.sum()),
           "nonmembers": int((~member).sum())}
    for name, online in (("lira_online", True), ("lira_offline", False)):
        s = lira_scores(target_phi, fit, online=online)
        out[name] = roc_summary(s[member], s[~member])
        out[f"{name}_scores"] = s.tolist()
    with torch.no_grad():
        was = target.training
        target.eval()
        logits = target(to_float(x[pool.to(x.device)]))
        loss = F.cross_entropy(logits.double(), y[pool.to(y.device)], reduction="none")
        target.train(was)
    s = -loss.cpu().numpy()
    out["loss"] = roc_summary(s[member], s[~member])
    return out
