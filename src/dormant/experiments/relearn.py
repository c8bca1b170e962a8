"""The relearning study: original and oracle (cached), each method, then the relearning
attack on every model, one results row per (method, seed, k) cell.

Rows already in ``results.jsonl`` are skipped, so a rerun after a crash finishes only the
missing cells.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from dormant.attacks import RelearnConfig, RelearnData, relearn
from dormant.data import Dataset, load_dataset, stratified_subset
from dormant.data.forget import (
    canary_labels,
    load_cscores,
    parse_forget,
    planned_size,
    select_forget,
)
from dormant.data.sources import default_cache_dir
from dormant.data.split import Split, leakable_count, make_split
from dormant.engine import Progress, Recipe, evaluate, fit, predict, resolve_device
from dormant.errors import DormantError
from dormant.experiments.profiles import Profile, profile_for
from dormant.experiments.spec import RelearnSpec
from dormant.metrics import l2_distance, recovery, tow
from dormant.models import ModelSpec, create_model
from dormant.store import ModelCache, append_row, cache_key, read_rows
from dormant.unlearn import (
    StoppableHparams,
    UnlearnContext,
    UnlearnData,
    get_method,
    make_hparams,
    unlearn,
)

REFERENCE_MODELS = ("original", "retrain")


@dataclass
class Prepared:
    """Everything one seed of a study shares: data on the device, split, original, oracle."""

    dataset: Dataset
    profile: Profile
    spec: ModelSpec
    recipe: Recipe
    seed: int
    x: torch.Tensor
    y: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    split: Split
    original: nn.Module
    oracle: nn.Module
    train_fit_acc: float
    original_key: str

    def unlearn_data(self) -> UnlearnData:
        dev = self.x.device
        return UnlearnData(
            self.x, self.y, self.split.forget.to(dev), self.split.retain.to(dev),
            self.split.leakable.to(dev), self.dataset.num_classes,
        )

    def context(self, progress: Progress | None) -> UnlearnContext:
        return UnlearnContext(self.recipe, lambda: create_model(self.spec, seed=self.seed),
                              self.seed, progress)


def load_study_data(spec: RelearnSpec, cache_dir: Path) -> Dataset:
    ds = load_dataset(spec.dataset, root=spec.data_root, download=spec.download,
                      cache_dir=cache_dir)
    return stratified_subset(ds, spec.train_size, seed=0) if spec.train_size else ds


def _cached_fit(cache, key, spec, device, train: Callable[[], tuple[nn.Module, dict]],
                meta: dict):
    """Load ``key`` or train and store it; ``meta`` (data fingerprint, split hash, recipe,
    seed, method) goes into the checkpoint's sidecar."""
    hit = cache.load(key, spec, device)
    if hit is not None:
        return hit[0], hit[2]
    model, extras = train()
    cache.save(key, model, spec, meta, extras)
    return model, extras


def prepare(
    spec: RelearnSpec, ds: Dataset, seed: int, cache: ModelCache, progress: Progress | None
) -> Prepared:
    device = resolve_device(spec.device)
    c, h, _ = ds.image_shape
    profile = profile_for(spec.dataset, len(ds.y_train), ds.image_shape)
    recipe = profile.train.with_(steps=spec.train_steps) if spec.train_steps else profile.train
    mspec = ModelSpec(spec.model or profile.model, c, ds.num_classes, h)
    fspec = parse_forget(spec.forget or profile.forget)
    y_cpu, canaries = canary_labels(fspec, ds.y_train, ds.num_classes, seed)
    x, y = ds.x_train.to(device), y_cpu.to(device)
    base = dict(data=ds.fingerprint, labels=cache_key(y=y_cpu.tolist()), model=mspec.to_dict(),
                recipe=recipe.to_dict(), seed=seed, device=device.type)
    okey = cache_key(kind="original", **base)

    def train_original():
        model = create_model(mspec, seed=seed)
        g = torch.Generator().manual_seed(seed)
        res = fit(model, x, y, torch.arange(len(y), device=device), recipe, generator=g,
                  track=True, progress=progress, label="original")
        return model, {"learning_speed": res.learning_speed}

    original, extras = _cached_fit(cache, okey, mspec, device, train_original,
                                   {"kind": "original", "data_fingerprint": ds.fingerprint,
                                    **base})
    fitted = (predict(original, x).argmax(1) == y).cpu()
    scores = None
    if fspec.needs_scores:
        n_source = len(ds.y_train)
        scores = (load_cscores(Path(spec.cscores), n_source) if spec.cscores
                  else extras["learning_speed"])
    forget = select_forget(fspec, y_cpu, ds.num_classes, seed, canaries=canaries,
                           scores=scores, fitted=fitted)
    split = make_split(forget, len(y_cpu), seed)
    rkey = cache_key(kind="retrain", original=okey, split=split.hash)
    prep = Prepared(ds, profile, mspec, recipe, seed, x, y, ds.x_test.to(device),
                    ds.y_test.to(device), split, original, original,
                    float(fitted.float().mean() * 100), okey)
    prep.oracle, _ = _cached_fit(
        cache, rkey, mspec, device,
        lambda: (unlearn("retrain", original, prep.unlearn_data(), prep.context(progress)), {}),
        {"kind": "retrain", "data_fingerprint": ds.fingerprint, "split": split.hash, **base},
    )
    return prep


def method_hparams(spec: RelearnSpec, prep: Prepared, method: str) -> dict:
    """Profile budgets, the oracle-matched stop target, then the user's own overrides."""
    info = get_method(method)
    hp: dict = {}
    if issubclass(info.hparams, StoppableHparams) or "steps" in info.defaults():
        hp["steps"] = spec.unlearn_steps or prep.profile.unlearn_steps
        hp["lr"] = spec.unlearn_lr or prep.profile.unlearn_lr
    if issubclass(info.hparams, StoppableHparams) and spec.stop_at_oracle:
        hp["stop_acc"] = evaluate(prep.oracle, prep.x, prep.y, prep.split.leakable).acc
    hp.update(spec.hparams.get(method, {}))
    make_hparams(method, hp)  # validate before any work
    return hp


def attack_config(spec: RelearnSpec, profile: Profile, k: int) -> RelearnConfig:
    return RelearnConfig(
        k=k, steps=spec.attack_steps or profile.attack_steps,
        lr=spec.attack_lr or profile.attack_lr, final_lr=(spec.attack_lr or profile.attack_lr) / 10,
        eval_every=spec.eval_every or profile.eval_every, test_every=profile.test_every,
    )


def cell_id(spec: RelearnSpec, method: str, seed: int, k: int, hp: dict) -> str:
    return cache_key(spec=spec.model_dump(exclude={"methods", "k", "seeds", "device"}),
                     method=method, seed=seed, k=k, hp=hp)


def check_spec(spec: RelearnSpec, ds: Dataset) -> None:
    """Everything about the study that can be wrong, refused before any training starts."""
    for name in spec.methods:
        if name not in REFERENCE_MODELS:
            make_hparams(name, spec.hparams.get(name, {}))
    for name in spec.hparams:
        if name not in spec.methods:
            raise DormantError(f"hparams given for {name!r}, which is not in methods; "
                               "add it to methods or remove its hparams")
    profile = profile_for(spec.dataset, len(ds.y_train), ds.image_shape)
    fspec = parse_forget(spec.forget or profile.forget)
    n_leak = leakable_count(planned_size(fspec, ds.y_train, ds.num_classes))
    if max(spec.k) > n_leak:
        raise DormantError(
            f"k={max(spec.k)} leaked examples asked for, but at most {n_leak} of the forget "
            f"set {fspec.text} are leakable; pick k <= {n_leak} or a larger forget set"
        )
    if spec.cscores and fspec.needs_scores:
        load_cscores(Path(spec.cscores), len(ds.y_train))
    create_model(ModelSpec(spec.model or profile.model, ds.image_shape[0], ds.num_classes,
                           ds.image_shape[1]))


def run_relearn(
    spec: RelearnSpec,
    out: Path,
    *,
    cache_dir: Path | None = None,
    progress: Progress | None = None,
    on_row: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Run every missing cell of the study; returns all rows of ``out/results.jsonl``."""
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    cache = ModelCache(cache_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = out / "results.jsonl"
    done = {r.get("cell") for r in read_rows(results)}
    ds = load_study_data(spec, cache_dir)
    check_spec(spec, ds)
    methods = list(REFERENCE_MODELS) + [m for m in spec.methods if m not in REFERENCE_MODELS]
    for seed in spec.seeds:
        prep = prepare(spec, ds, seed, cache, progress)
        for k in spec.k:
            prep.split.leaked(k)  # refuse an impossible k before any unlearning
        for method in methods:
            hp = {} if method in REFERENCE_MODELS else method_hparams(spec, prep, method)
            cells = {k: cell_id(spec, method, seed, k, hp) for k in spec.k}
            if all(c in done for c in cells.values()):
                continue
            t0 = time.perf_counter()
            model = unlearned_model(prep, method, hp, cache, progress)
            unlearn_s = time.perf_counter() - t0
            before = _measure(prep, model)
            for k, cid in cells.items():
                if cid in done:
                    continue
                row = _attack_row(spec, prep, method, model, before, k, hp)
                row.update(cell=cid, unlearn_seconds=round(unlearn_s, 3))
                row["seconds"] = round(unlearn_s + row["attack_seconds"], 3)
                append_row(results, row)
                done.add(cid)
                if on_row:
                    on_row(row)
    return read_rows(results)


def unlearned_model(prep: Prepared, method: str, hp: dict, cache: ModelCache,
                    progress: Progress | None) -> nn.Module:
    if method == "original":
        return prep.original
    if method == "retrain":
        return prep.oracle
    key = cache_key(kind="unlearned", original=prep.original_key, split=prep.split.hash,
                    method=method, hp=hp)
    model, _ = _cached_fit(
        cache, key, prep.spec, prep.x.device,
        lambda: (unlearn(method, prep.original, prep.unlearn_data(), prep.context(progress),
                         **hp), {}),
        {"kind": "unlearned", "method": method, "hparams": hp, "original": prep.original_key,
         "data_fingerprint": prep.dataset.fingerprint, "split": prep.split.hash,
         "seed": prep.seed},
    )
    return model


def _measure(prep: Prepared, model: nn.Module) -> dict:
    retain = evaluate(model, prep.x, prep.y, prep.split.retain.to(prep.x.device)).acc
    forget = evaluate(model, prep.x, prep.y, prep.split.heldout.to(prep.x.device)).acc
    test = evaluate(model, prep.x_test, prep.y_test).acc
    return {"retain_acc": retain, "forget_acc": forget, "test_acc": test,
            "tow": tow(retain, forget, test)}


def _attack_row(spec, prep: Prepared, method, model, before, k, hp) -> dict:
    cfg = attack_config(spec, prep.profile, k)
    dev = prep.x.device
    data = RelearnData(prep.x, prep.y, prep.split.retain.to(dev), prep.split.leaked(k).to(dev),
                       prep.split.heldout.to(dev), prep.x_test, prep.y_test)
    t0 = time.perf_counter()
    attacked, curve = relearn(model, data, cfg, prep.recipe, seed=prep.seed)
    attack_s = time.perf_counter() - t0
    retain_after = evaluate(attacked, prep.x, prep.y, data.retain).acc
    return {
        "dataset": spec.dataset, "model": prep.spec.name,
        "forget": spec.forget or prep.profile.forget, "method": method, "seed": prep.seed,
        "k": k, **{key: round(v, 4) for key, v in before.items()},
        "retain_acc_attacked": round(retain_after, 4),
        "test_acc_attacked": round(curve.test_acc[-1], 4),
        "forget_acc_attacked": round(curve.best, 4),
        "forget_acc_attacked_last": round(curve.last, 4),
        "recovery": round(recovery(before["forget_acc"], curve.best), 4),
        "train_fit_acc": round(prep.train_fit_acc, 4),
        "l2_to_original": round(l2_distance(model, prep.original), 6),
        "forget_size": len(prep.split.forget), "heldout_size": len(prep.split.heldout),
        "split": prep.split.hash, "hparams": hp,
        "attack": {"steps": cfg.steps, "lr": cfg.lr, "eval_every": cfg.eval_every},
        "curve_steps": curve.steps, "curve_forget_acc": [round(a, 3) for a in curve.forget_acc],
        "attack_seconds": round(attack_s, 3),
    }
