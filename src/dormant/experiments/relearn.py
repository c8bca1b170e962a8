"""The relearning study: for every seed and forget set, the original and oracle (cached),
each method pipeline, then the relearning attack on every model; one results row per cell
(pipeline x seed x forget set x k x relearn set x attack setting).

Rows already in ``results.jsonl`` are skipped, so a rerun after a crash finishes only the
missing cells and duplicates none. A cell whose training diverges is written as a failed row
with its reason, and the study goes on.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from dormant.attacks import RelearnConfig, RelearnData, relearn
from dormant.data import Dataset
from dormant.data.forget import load_cscores, parse_forget, planned_size
from dormant.data.sources import default_cache_dir
from dormant.data.split import leakable_count
from dormant.engine import Diverged, Progress, evaluate
from dormant.errors import DormantError
from dormant.experiments.analysis import Probe, analyse, make_probe, mia
from dormant.experiments.calibrate import Calibration, calibrate
from dormant.experiments.pipeline import Pipeline, resolve
from dormant.experiments.prepare import (
    Prepared,
    cached_fit,
    forget_sets,
    load_study_data,
    prepare,
)
from dormant.experiments.profiles import Profile, profile_for
from dormant.experiments.spec import RelearnSpec
from dormant.metrics import aurc, l2_distance, recovery, tow
from dormant.models import ModelSpec, create_model
from dormant.store import ModelCache, ResultsLog, cache_key
from dormant.unlearn import StoppableHparams, get_method, resolve_hparams, unlearn

GRID_KEYS = {"methods", "hparams", "preset", "k", "seeds", "forget", "relearn_sets", "attack_lr",
             "attack_steps", "device", "calibrate", "stop"}


def method_hparams(spec: RelearnSpec, prep: Prepared, method: str, user: dict) -> dict:
    """``resolve_hparams`` under ``spec.preset`` (None: the dataset profile's preset), with
    ``unlearn_steps``/``unlearn_lr`` (step-based methods), the oracle-matched stop target
    (``stop: oracle-leakable`` only), then the user's own overrides on top; checked."""
    info = get_method(method)
    over: dict = {}
    if "steps" in info.defaults():
        over.update({k: v for k, v in (("steps", spec.unlearn_steps), ("lr", spec.unlearn_lr))
                     if v})
    if issubclass(info.hparams, StoppableHparams) and spec.stop == "oracle-leakable":
        over["stop_acc"] = prep.oracle_monitor_acc
    over.update(user)
    return resolve_hparams(method, spec.preset or prep.profile.preset, over,
                           n_train=len(prep.dataset.y_train))


def attack_settings(spec: RelearnSpec, profile: Profile) -> list[tuple[float, int]]:
    """The attack sweep: every learning rate with every step budget."""
    return [(lr, steps) for lr in (spec.attack_lr or [profile.attack_lr])
            for steps in (spec.attack_steps or [profile.attack_steps])]


def attack_config(spec: RelearnSpec, profile: Profile, k: int, lr: float, steps: int
                  ) -> RelearnConfig:
    return RelearnConfig(k=k, steps=steps, lr=lr, final_lr=lr / 10,
                         eval_every=spec.eval_every or profile.eval_every,
                         test_every=profile.test_every)


def check_spec(spec: RelearnSpec, ds: Dataset) -> list[Pipeline]:
    """Everything about the study that can be wrong, refused before any training starts."""
    pipelines = resolve(spec)
    profile = profile_for(spec.dataset, len(ds.y_train), ds.image_shape)
    spec.recipe(profile.train)
    for text in forget_sets(spec, profile):
        fspec = parse_forget(text)
        n_leak = leakable_count(planned_size(fspec, ds.y_train, ds.num_classes))
        if max(spec.k) > n_leak:
            raise DormantError(
                f"k={max(spec.k)} leaked examples asked for, but at most {n_leak} of the "
                f"forget set {fspec.text} are leakable; pick k <= {n_leak} or a larger forget set"
            )
        if spec.cscores and fspec.needs_scores:
            load_cscores(Path(spec.cscores), len(ds.y_train))
    if spec.relearn_sets == ["forget-only"] and spec.k == [0]:
        raise DormantError("relearn set forget-only needs some k >= 1; with k = 0 the grid "
                           "has no cells")
    create_model(ModelSpec(spec.model or profile.model, ds.image_shape[0], ds.num_classes,
                           ds.image_shape[1]))
    return pipelines


def _cells(spec: RelearnSpec, prep: Prepared, pipe: Pipeline, stage_hps: list[dict]
           ) -> list[dict]:
    base = cache_key(spec=spec.model_dump(exclude=GRID_KEYS), method=pipe.name,
                     stages=[[s.method, hp] for s, hp in zip(pipe.stages, stage_hps, strict=True)],
                     seed=prep.seed, forget=prep.forget_text)
    cells = []
    for lr, steps in attack_settings(spec, prep.profile):
        for rs in spec.relearn_sets:
            for k in spec.k:
                if rs == "forget-only" and k == 0:
                    continue  # nothing to train on; the seed code omits it too
                cells.append({"k": k, "relearn_set": rs, "attack_lr": lr, "attack_steps": steps,
                              "cell": cache_key(base=base, k=k, rs=rs, lr=lr, steps=steps)})
    return cells


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
    log = ResultsLog(out, on_row)
    ds = load_study_data(spec, cache_dir)
    pipelines = check_spec(spec, ds)
    profile = profile_for(spec.dataset, len(ds.y_train), ds.image_shape)

    chosen: dict[tuple[str, str], list[Calibration]] = {}
    for seed in spec.seeds:
        for forget_text in forget_sets(spec, profile):
            prep = prepare(spec, ds, seed, cache, progress, forget_text)
            for k in spec.k:
                prep.split.leaked(k)  # refuse an impossible k before any unlearning
            probe = make_probe(prep, spec.analysis_size) if spec.analysis else None
            for pipe in pipelines:
                if pipe.is_reference:
                    stage_hps, cal = [{}], []
                else:
                    # each seed's own budgets and stop target, then the strengths
                    stage_hps = [method_hparams(spec, prep, s.method, s.hparams)
                                 for s in pipe.stages]
                    cal = chosen.get((forget_text, pipe.name), [])
                    if spec.calibrate == "oracle" and (forget_text, pipe.name) not in chosen:
                        # the first seed picks every method's strength, for all seeds
                        cal = calibrate(
                            prep, pipe, stage_hps, [s.hparams for s in pipe.stages],
                            lambda p, h, prep=prep: unlearned_model(prep, p, h, cache,
                                                                    progress))
                        chosen[forget_text, pipe.name] = cal
                    for c in cal:
                        stage_hps[c.stage][c.param] = c.chosen
                missing = [c for c in _cells(spec, prep, pipe, stage_hps)
                           if c["cell"] not in log]
                if missing:
                    _run_pipeline(spec, prep, probe, pipe, stage_hps, cal, missing, cache,
                                  progress, log.emit)
    return log.read()


def _run_pipeline(spec, prep: Prepared, probe: Probe | None, pipe: Pipeline, stage_hps,
                  cal: list[Calibration], cells, cache, progress, emit) -> None:
    common = {"dataset": spec.dataset, "model": prep.spec.name, "forget": prep.forget_text,
              "method": pipe.name, "seed": prep.seed, "hparams": stage_hps[-1],
              "pipeline": [[s.method, hp] for s, hp in zip(pipe.stages, stage_hps, strict=True)],
              "calibration": [c.to_dict() for c in cal]}
    t0 = time.perf_counter()
    try:
        model = unlearned_model(prep, pipe, stage_hps, cache, progress)
    except Diverged as e:
        for c in cells:
            emit({**common, **c, "status": "failed", "reason": f"unlearning diverged: {e}"})
        return
    unlearn_s = time.perf_counter() - t0
    before = _measure(prep, model)
    extra = analyse(prep, probe, model, pipe.name == "original", spec.lmc_points) if probe \
        else {}
    for c in cells:
        try:
            row = _attack_row(spec, prep, probe, model, before, c)
        except Diverged as e:
            emit({**common, **c, "status": "failed", "reason": f"attack diverged: {e}"})
            continue
        emit({**common, **c, "status": "ok", **before, **row, **extra,
              "unlearn_seconds": round(unlearn_s, 3),
              "seconds": round(unlearn_s + row["attack_seconds"], 3)})


def _check_finite(model: nn.Module, name: str) -> nn.Module:
    if not all(torch.isfinite(p).all() for p in model.parameters()):
        raise Diverged(f"{name} produced non-finite weights")
    return model


def unlearned_model(prep: Prepared, pipe: Pipeline, stage_hps: list[dict], cache: ModelCache,
                    progress: Progress | None) -> nn.Module:
    """Run the pipeline's stages from the original; every stage's result is cached, so
    chains that share a first stage train it once."""
    if pipe.name == "original":
        return prep.original
    if pipe.name == "retrain":
        return prep.oracle
    model, prev = prep.original, None
    # theta_pre stays the original in every stage of a then: chain
    ctx = dataclasses.replace(prep.context(progress), pretrained=prep.original)
    for stage, hp in zip(pipe.stages, stage_hps, strict=True):
        parts = dict(kind="unlearned", original=prep.original_key, split=prep.split.hash,
                     method=stage.method, hp=hp)
        if prev is not None:
            parts["after"] = prev
        key = cache_key(**parts)
        src = model
        model, _ = cached_fit(
            cache, key, prep.spec, prep.x.device,
            lambda src=src, stage=stage, hp=hp: (_check_finite(
                unlearn(stage.method, src, prep.unlearn_data(), ctx, **hp), stage.method), {}),
            {**parts, "data_fingerprint": prep.dataset.fingerprint, "seed": prep.seed},
        )
        prev = key
    return model


def _measure(prep: Prepared, model: nn.Module) -> dict:
    retain = evaluate(model, prep.x, prep.y, prep.split.retain.to(prep.x.device)).acc
    forget = evaluate(model, prep.x, prep.y, prep.split.heldout.to(prep.x.device)).acc
    test = evaluate(model, prep.x_test, prep.y_test).acc
    return {"retain_acc": round(retain, 4), "forget_acc": round(forget, 4),
            "test_acc": round(test, 4), "tow": round(tow(retain, forget, test), 4),
            "train_fit_acc": round(prep.train_fit_acc, 4),
            "train_steps": prep.train_steps_taken,
            "l2_to_original": round(l2_distance(model, prep.original), 6),
            "forget_size": len(prep.split.forget), "heldout_size": len(prep.split.heldout),
            "split": prep.split.hash}


def _attack_row(spec, prep: Prepared, probe: Probe | None, model, before, cell) -> dict:
    k = cell["k"]
    cfg = attack_config(spec, prep.profile, k, cell["attack_lr"], cell["attack_steps"])
    forget_classes = torch.unique(prep.y[prep.split.forget.to(prep.x.device)])
    data = RelearnData.build(cell["relearn_set"], prep.x, prep.y, prep.x_test, prep.y_test,
                             prep.split.retain, prep.split.leaked(k),
                             prep.split.heldout.to(prep.x.device), forget_classes)
    t0 = time.perf_counter()
    attacked, curve = relearn(model, data, cfg, prep.recipe, seed=prep.seed)
    attack_s = time.perf_counter() - t0
    retain_after = evaluate(attacked, prep.x, prep.y, prep.split.retain.to(prep.x.device)).acc
    after = {} if probe is None else {f"{key}_attacked": v
                                      for key, v in mia(prep, probe, attacked).items()}
    return {
        "retain_acc_attacked": round(retain_after, 4),
        "test_acc_attacked": round(curve.test_acc[-1], 4),
        "forget_acc_attacked": round(curve.best, 4),
        "forget_acc_attacked_last": round(curve.last, 4),
        "forget_acc_attacked_end": round(curve.end, 4),
        "recovery": round(recovery(before["forget_acc"], curve.best), 4),
        "aurc": round(aurc(curve.steps, curve.forget_acc, before["forget_acc"]), 4),
        **after,
        "attack": {"steps": cfg.steps, "lr": cfg.lr, "eval_every": cfg.eval_every},
        "curve_steps": curve.steps, "curve_forget_acc": [round(a, 3) for a in curve.forget_acc],
        "attack_seconds": round(attack_s, 3),
    }
