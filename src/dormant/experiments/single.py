"""One-shot runs behind ``dormant train`` and ``dormant unlearn``: a model on disk in, a model
on disk out, with the sidecar saying exactly what was done."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import safetensors.torch
import torch

from dormant.data.forget import canary_labels, load_cscores, parse_forget, select_forget
from dormant.data.sources import default_cache_dir
from dormant.data.split import make_split
from dormant.engine import Progress, Recipe, evaluate, fit, predict, resolve_device
from dormant.errors import DormantError
from dormant.experiments.prepare import load_study_data
from dormant.experiments.profiles import profile_for
from dormant.experiments.spec import RelearnSpec
from dormant.models import ModelSpec, create_model
from dormant.store import load_model, save_checkpoint
from dormant.store.checkpoint import read_sidecar
from dormant.store.files import atomic_write_bytes, atomic_write_text, sha256_file
from dormant.unlearn import (
    UnlearnContext,
    UnlearnData,
    get_preset,
    make_hparams,
    resolve_hparams,
    unlearn,
)


def train_model(spec: RelearnSpec, out: Path, *, seed: int = 0,
                progress: Progress | None = None, sisa: dict | None = None
                ) -> tuple[Path, dict]:
    """Train a model with the dataset's memorising recipe; ``spec.forget`` matters only for
    ``canary:N``, whose relabelled images must be in the training labels. ``sisa`` (the
    ``sisa`` method's hyper-parameters, e.g. ``{"shards": 5, "slices": 4}``) trains a SISA
    ensemble of that model instead, written with its shards, slices and assignment."""
    cache_dir = default_cache_dir()
    ds = load_study_data(spec, cache_dir)
    device = resolve_device(spec.device)
    c, h, _ = ds.image_shape
    profile = profile_for(spec.dataset, len(ds.y_train), ds.image_shape)
    recipe = spec.recipe(profile.train)
    mspec = ModelSpec(spec.model or profile.model, c, ds.num_classes, h)
    fspec = parse_forget(spec.forget[0]) if spec.forget else None
    if fspec is not None and fspec.kind != "canary":
        raise DormantError(
            f"dormant train --forget takes only canary:N (images relabelled before training); "
            f"{fspec.text} is chosen at unlearning time: pass it to dormant unlearn"
        )
    y_cpu, _ = canary_labels(fspec, ds.y_train, ds.num_classes, seed) if fspec else (ds.y_train,
                                                                                      None)
    x, y = ds.x_train.to(device), y_cpu.to(device)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "model.safetensors"
    meta = {"kind": "trained", "dataset": spec.dataset, "train_size": spec.train_size,
            "data_fingerprint": ds.fingerprint, "recipe": recipe.to_dict(), "seed": seed,
            "label_noise": fspec.text if fspec and fspec.kind == "canary" else None}
    if sisa is not None:
        return _train_sisa(sisa, mspec, recipe, x, y, ds, device, path, meta, seed, progress)
    model = create_model(mspec, seed=seed)
    res = fit(model, x, y, torch.arange(len(y), device=device), recipe,
              generator=torch.Generator().manual_seed(seed), track=True, progress=progress,
              label="train")
    metrics = {
        "train_fit_acc": evaluate(model, x, y).acc,
        "test_acc": evaluate(model, ds.x_test.to(device), ds.y_test.to(device)).acc,
        "seconds": round(res.seconds, 3),
    }
    save_checkpoint(path, model, mspec, {**meta, "metrics": metrics})
    atomic_write_bytes(path.with_suffix(".extra.safetensors"),
                       safetensors.torch.save({"learning_speed": res.learning_speed.contiguous()}))
    return path, metrics


def _train_sisa(values: dict, mspec: ModelSpec, recipe: Recipe, x, y, ds, device, path: Path,
                meta: dict, seed: int, progress: Progress | None) -> tuple[Path, dict]:
    """``train_model`` for a SISA ensemble: every shard and slice from scratch, timed; that
    time is the model's full-retrain cost every deletion request is compared with."""
    from dormant.store.sisa import save_sisa
    from dormant.unlearn.sisa import Plan, side_by_side
    from dormant.unlearn.sisa import train as train_sisa

    plan = Plan.of(make_hparams("sisa", values), recipe, len(y), seed)
    init = lambda s: create_model(mspec, seed=s)  # noqa: E731
    trained, cost = train_sisa(plan, x, y, torch.arange(len(y)), init, progress=progress,
                               workers=side_by_side(device, plan.shards))
    model = trained.ensemble(init, device)
    metrics = {
        "train_fit_acc": evaluate(model, x, y).acc,
        "test_acc": evaluate(model, ds.x_test.to(device), ds.y_test.to(device)).acc,
        "seconds": round(cost.seconds, 3),
    }
    costs = {"retrain_seconds": round(cost.seconds, 3), "steps": cost.steps,
             "full_retrain_seconds": round(cost.seconds, 3)}
    save_sisa(path, trained, model, mspec, {**meta, "metrics": metrics, "sisa": costs})
    return path, metrics


def plan_line(method: str, hp, device, preset: str | None, overrides: dict | None,
              profile_preset: str | None = None, n_train: int | None = None) -> str:
    """What ``dormant unlearn`` will run, in one line: ``gradient_ascent: 39,100 steps at lr
    1e-05 on cpu (preset paper; --preset digits for 1,500)``."""
    values = dataclasses.asdict(hp)
    name = preset or "paper"
    if "steps" in values and "lr" in values:
        what = f"{values['steps']:,} steps at lr {values['lr']:g}"
    else:
        what = ", ".join(f"{k}={v}" for k, v in values.items()) or "its defaults"
    note = f"preset {name}"
    if profile_preset and profile_preset != name and "steps" not in (overrides or {}):
        try:
            other = resolve_hparams(method, profile_preset, overrides, n_train=n_train)
        except DormantError:
            other = {}
        steps = getattr(make_hparams(method, other), "steps", None) if other else None
        if steps is not None and steps != values.get("steps"):
            note += f"; --preset {profile_preset} for {steps:,}"
    return f"{method}: {what} on {device} ({note})"


def unlearn_checkpoint(spec: RelearnSpec, checkpoint: Path, method: str, out: Path, *,
                       seed: int = 0, overrides: dict | None = None,
                       preset: str | None = None,
                       progress: Progress | None = None,
                       announce: Callable[[str], None] | None = None) -> tuple[Path, dict]:
    """Apply ``method`` to a saved model for the forget set ``spec.forget``, with
    ``resolve_hparams`` under ``preset`` (None: ``paper``, the method's class defaults) and
    ``overrides`` on top. ``announce`` gets one line of what will run (method, steps, lr,
    device) before any of it does."""
    get_preset(method, preset)  # bad names and values fail before any data loads
    make_hparams(method, overrides)
    ds = load_study_data(spec, default_cache_dir())
    hp = make_hparams(method, resolve_hparams(method, preset, overrides,
                                              n_train=len(ds.y_train)))
    device = resolve_device(spec.device)
    c, h, _ = ds.image_shape
    profile = profile_for(spec.dataset, len(ds.y_train), ds.image_shape)
    if announce is not None:
        announce(plan_line(method, hp, device, preset, overrides, profile.preset,
                           len(ds.y_train)))
    side = read_sidecar(Path(checkpoint))
    name = spec.model or side.get("model", {}).get("name") or profile.model
    model, side = load_model(Path(checkpoint), ModelSpec(name, c, ds.num_classes, h), device)
    if side.get("data_fingerprint") not in (None, ds.fingerprint):
        raise DormantError(
            f"{checkpoint} was trained on other data than --dataset {spec.dataset} gives "
            "(fingerprints differ); pass the same --dataset and --train-size as for training"
        )
    fspec = parse_forget(spec.forget[0] if spec.forget else profile.forget)
    if fspec.kind == "canary" and side.get("label_noise") != fspec.text:
        raise DormantError(
            f"forget spec {fspec.text} needs a model trained with those canaries; "
            f"run dormant train --forget {fspec.text} first"
        )
    y_cpu, canaries = canary_labels(fspec, ds.y_train, ds.num_classes, side.get("seed", seed))
    x, y = ds.x_train.to(device), y_cpu.to(device)
    scores = None
    if fspec.needs_scores:
        extra = Path(checkpoint).with_suffix(".extra.safetensors")
        if spec.cscores:
            scores = load_cscores(Path(spec.cscores), len(ds.y_train))
        elif extra.is_file():
            scores = safetensors.torch.load_file(str(extra))["learning_speed"]
        else:
            raise DormantError(
                f"forget spec {fspec.text} ranks by typicality: pass --cscores FILE.npz "
                "(this checkpoint has no learning-speed record beside it)"
            )
    fitted = (predict(model, x).argmax(1) == y).cpu()
    forget = select_forget(fspec, y_cpu, ds.num_classes, seed, canaries=canaries,
                           scores=scores, fitted=fitted)
    split = make_split(forget, len(y_cpu), seed)
    recipe = Recipe(**side["recipe"]) if "recipe" in side else profile.train
    mspec = ModelSpec(name, c, ds.num_classes, h)
    data = UnlearnData(x, y, split.forget.to(device), split.retain.to(device),
                       split.leakable.to(device), ds.num_classes)
    ctx = UnlearnContext(recipe, lambda s=None: create_model(
                            mspec, seed=side.get("seed", seed) if s is None else s),
                         seed, progress)
    result = unlearn(method, model, data, ctx, **dataclasses.asdict(hp))
    x_test, y_test = ds.x_test.to(device), ds.y_test.to(device)
    metrics = {
        "retain_acc": evaluate(result, x, y, data.retain).acc,
        "forget_acc": evaluate(result, x, y, split.heldout.to(device)).acc,
        "forget_acc_before": evaluate(model, x, y, split.heldout.to(device)).acc,
        "test_acc": evaluate(result, x_test, y_test).acc,
    }
    out.mkdir(parents=True, exist_ok=True)
    path = out / "unlearned.safetensors"
    save_checkpoint(path, result, mspec, {
        "kind": "unlearned", "method": method, "preset": preset or "paper",
        "hparams": dataclasses.asdict(hp),
        "source_checkpoint": str(checkpoint), "source_sha256": sha256_file(Path(checkpoint)),
        "dataset": spec.dataset, "train_size": spec.train_size,
        "data_fingerprint": ds.fingerprint, "forget": fspec.text, "split": split.hash,
        "recipe": recipe.to_dict(), "seed": side.get("seed", seed), "metrics": metrics,
    })
    atomic_write_text(out / "forget_ids.txt", "\n".join(map(str, forget.tolist())) + "\n")
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2))
    return path, metrics
