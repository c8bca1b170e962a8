"""The clean-unlearning backdoor study: for every seed, the attacker's surrogate, the weakly
poisoned victim and an unpoisoned twin (all cached), then every method under every
condition, each model scanned by Neural Cleanse, Cognitive Distillation and I-BAU.

One results row per (method, condition, seed). Rows already in ``results.jsonl`` are
skipped, so a rerun finishes only what is missing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from dormant.attacks import PoisonSpec, poison
from dormant.attacks.clean_unlearning import (
    CleanUnlearningSpec,
    Planted,
    plant,
    random_request,
    select_request,
)
from dormant.data import Dataset
from dormant.data.sources import default_cache_dir
from dormant.engine import Diverged, Progress, Recipe, fit, resolve_device
from dormant.experiments.backdoor_scan import Scanner
from dormant.experiments.backdoor_spec import (
    UNLEARNING_CONDITIONS,
    BackdoorSpec,
    baseline_triggers,
)
from dormant.experiments.prepare import cached_fit, load_study_data
from dormant.experiments.profiles import profile_for
from dormant.experiments.spec import override_recipe
from dormant.models import ModelSpec, create_model
from dormant.store import ModelCache, ResultsLog, cache_key
from dormant.unlearn import (
    StoppableHparams,
    UnlearnContext,
    UnlearnData,
    get_method,
    make_hparams,
    unlearn,
)

GRID_KEYS = {"methods", "hparams", "preset", "conditions", "seeds", "device", "defenses"}


@dataclass
class Victim:
    """What every cell of one seed shares."""

    seed: int
    mspec: ModelSpec
    recipe: Recipe
    num_classes: int
    x_clean: torch.Tensor
    y_clean: torch.Tensor
    planted: Planted
    request: torch.Tensor
    control: torch.Tensor
    poisoned: nn.Module
    unpoisoned: nn.Module
    keys: dict[str, str]
    baselines: dict[str, nn.Module] = field(default_factory=dict)

    def training_set(self, poisoned: bool) -> tuple[torch.Tensor, torch.Tensor]:
        return (self.planted.x, self.planted.y) if poisoned else (self.x_clean, self.y_clean)


def study_recipe(spec: BackdoorSpec, ds: Dataset) -> tuple[ModelSpec, Recipe]:
    profile = profile_for(spec.dataset, len(ds.y_train), ds.image_shape)
    c, h, _ = ds.image_shape
    return (ModelSpec(spec.model or profile.model, c, ds.num_classes, h),
            override_recipe(profile.train, spec.train_recipe, spec.train_steps))


def check_spec(spec: BackdoorSpec, ds: Dataset) -> CleanUnlearningSpec:
    """Everything that can be wrong, refused before any training starts."""
    attack = spec.attack()
    attack.poison.trigger.check(ds.image_shape)
    attack.poison.source_classes(ds.num_classes)
    for t in baseline_triggers().values():
        t.check(ds.image_shape)
    for m in spec.methods:
        make_hparams(m, spec.method_hparams(m))
    # hparams of methods this run leaves out (e.g. --methods) are checked but not used
    for m, hp in spec.hparams.items():
        make_hparams(m, hp)
    mspec, _ = study_recipe(spec, ds)
    create_model(mspec)
    # the pool and poison budget are checked by planting once (cheap, no training)
    plant(ds.x_train, ds.y_train, attack, ds.num_classes, spec.seeds[0])
    return attack


def _train(cache: ModelCache, mspec: ModelSpec, recipe: Recipe, x, y, ids, seed: int,
           progress: Progress | None, label: str, **key_parts) -> tuple[nn.Module, str]:
    key = cache_key(kind="backdoor-train", model=mspec.to_dict(), recipe=recipe.to_dict(),
                    seed=seed, device=x.device.type, **key_parts)

    def train():
        model = create_model(mspec, seed=seed)
        fit(model, x, y, ids.to(x.device), recipe, generator=torch.Generator().manual_seed(seed),
            progress=progress, label=label)
        return model, {}

    model, _ = cached_fit(cache, key, mspec, x.device, train, {"kind": label, **key_parts,
                                                               "seed": seed})
    return model, key


def prepare_victim(spec: BackdoorSpec, attack: CleanUnlearningSpec, ds: Dataset, seed: int,
                   cache: ModelCache, progress: Progress | None) -> Victim:
    device = resolve_device(spec.device)
    mspec, recipe = study_recipe(spec, ds)
    x, y = ds.x_train.to(device), ds.y_train.to(device)
    planted = plant(x, y, attack, ds.num_classes, seed)
    everyone = torch.arange(len(y))
    poison_key = cache_key(data=ds.fingerprint, attack=repr(attack), seed=seed)
    # the attacker's surrogate: their own training run with the poisons, another seed
    surrogate, _ = _train(cache, mspec, recipe, planted.x, planted.y, everyone, seed + 10_000,
                          progress, "surrogate", data=ds.fingerprint, poisons=poison_key)
    request = select_request(surrogate, planted, attack, seed)
    control = random_request(planted, len(request), seed, exclude=request)
    poisoned, pkey = _train(cache, mspec, recipe, planted.x, planted.y, everyone, seed,
                            progress, "poisoned", data=ds.fingerprint, poisons=poison_key)
    unpoisoned, ukey = _train(cache, mspec, recipe, x, y, everyone, seed, progress,
                              "unpoisoned", data=ds.fingerprint)
    v = Victim(seed, mspec, recipe, ds.num_classes, x, y, planted, request, control, poisoned,
               unpoisoned, {"poisoned": pkey, "unpoisoned": ukey})
    n_base = max(1, round(spec.baseline_ratio * len(y) / (ds.num_classes - 1)))
    for name, trigger in baseline_triggers().items():
        if name in spec.conditions:
            p = poison(x, y, PoisonSpec(spec.target, trigger, n_base), ds.num_classes, seed)
            v.baselines[name], _ = _train(cache, mspec, recipe, p.x, p.y, everyone, seed,
                                          progress, name, data=ds.fingerprint,
                                          baseline=repr(trigger), per_class=n_base)
    return v


def _cell_key(spec: BackdoorSpec, method: str, condition: str, seed: int) -> str:
    return cache_key(spec=spec.model_dump(exclude=GRID_KEYS),
                     hparams=spec.method_hparams(method), method=method,
                     condition=condition, seed=seed)


def _unlearn(spec: BackdoorSpec, v: Victim, method: str, condition: str, hp: dict,
             cache: ModelCache, progress: Progress | None) -> tuple[nn.Module, torch.Tensor]:
    poisoned = condition != "unpoisoned"
    forget = v.control if condition == "random-clean" else v.request
    x, y = v.training_set(poisoned)
    keep = torch.ones(len(y), dtype=torch.bool)
    keep[forget] = False
    dev = x.device
    data = UnlearnData(x, y, forget.to(dev), torch.nonzero(keep).flatten().to(dev),
                       forget.to(dev), v.num_classes)
    base = v.poisoned if poisoned else v.unpoisoned
    ctx = UnlearnContext(v.recipe, lambda s=None: create_model(
        v.mspec, seed=v.seed if s is None else s), v.seed, progress)
    if method == "retrain":
        key = cache_key(kind="backdoor-retrain", base=v.keys["poisoned" if poisoned
                                                             else "unpoisoned"],
                        forget=forget.tolist())
        model, _ = cached_fit(cache, key, v.mspec, dev,
                              lambda: (unlearn("retrain", base, data, ctx), {}),
                              {"kind": "retrain", "seed": v.seed, "condition": condition})
        return model, forget
    return unlearn(method, base, data, ctx, **hp), forget


def run_backdoor(
    spec: BackdoorSpec,
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
    attack = check_spec(spec, ds)
    trigger = attack.poison.trigger

    for seed in spec.seeds:
        cells = _seed_cells(spec, seed)
        if all(c["cell"] in log for c in cells):
            continue
        v = prepare_victim(spec, attack, ds, seed, cache, progress)
        scan = Scanner(spec, ds, v, out, progress)
        common = {"dataset": spec.dataset, "model": v.mspec.name, "seed": seed,
                  "target": spec.target, "strategy": spec.strategy,
                  "forget_size": len(v.request), "poisons": len(v.planted.poisons)}
        for c in cells:
            if c["cell"] in log:
                continue
            t0 = time.perf_counter()
            base = {**common, **c, "trigger": trigger.kind, "amplitude": trigger.amplitude}
            try:
                row = _run_cell(spec, v, scan, c, log.rows, cache, progress)
            except Diverged as e:
                log.emit({**base, "status": "failed", "error": f"unlearning diverged: {e}"})
                continue
            log.emit({**base, **row, "status": "ok",
                      "seconds": round(time.perf_counter() - t0, 3)})
    return log.read()


def _seed_cells(spec: BackdoorSpec, seed: int) -> list[dict]:
    cells = []
    for cond in spec.conditions:
        methods = spec.methods if cond in UNLEARNING_CONDITIONS else ["none"]
        for m in methods:
            cells.append({"method": m, "condition": cond,
                          "cell": _cell_key(spec, m, cond, seed)})
    # random-clean is matched to the attack's drop, so the attack runs first
    order = {"attack": 0}
    return sorted(cells, key=lambda c: order.get(c["condition"], 1))


def _hparams(spec: BackdoorSpec, v: Victim, method: str, condition: str, rows: dict,
             scan: Scanner) -> tuple[dict, float | None]:
    hp = spec.method_hparams(method)
    matchable = method != "retrain" and issubclass(get_method(method).hparams,
                                                   StoppableHparams)
    if condition != "random-clean" or not spec.strength_match or not matchable:
        return hp, None
    ref = rows.get(_cell_key(spec, method, "attack", v.seed))
    if ref is None or ref.get("status") != "ok":
        return hp, None
    drop = ref["forget_acc_before"] - ref["forget_acc_after"]
    before = scan.forget_acc(v.poisoned, v.control, poisoned=True)
    hp["stop_acc"] = before - drop
    steps = make_hparams(method, hp).steps
    hp["steps"] = max(steps, round(steps * spec.match_budget))
    return hp, round(drop, 4)


def _run_cell(spec, v: Victim, scan: Scanner, cell: dict, rows: dict, cache, progress) -> dict:
    method, condition = cell["method"], cell["condition"]
    if condition in ("none", "badnets", "blended"):
        model = v.poisoned if condition == "none" else v.baselines[condition]
        trigger = None if condition == "none" else baseline_triggers()[condition]
        before = scan.before("poisoned" if condition == "none" else condition, model, trigger)
        after = {k.replace("_before", "_after"): val for k, val in before.items()
                 if k.endswith("_before")}
        out = {**before, **after, **scan.ibau(model, trigger),
               "matched_drop": None, "artefact_after": before["artefact_before"]}
        if trigger is not None:
            out.update(trigger=trigger.kind, amplitude=trigger.amplitude)
        return out
    poisoned = condition != "unpoisoned"
    base = v.poisoned if poisoned else v.unpoisoned
    hp, matched = _hparams(spec, v, method, condition, rows, scan)
    forget = v.control if condition == "random-clean" else v.request
    before = scan.before("poisoned" if poisoned else "unpoisoned", base, None)
    before["forget_acc_before"] = scan.forget_acc(base, forget, poisoned)
    t0 = time.perf_counter()
    model, forget = _unlearn(spec, v, method, condition, hp, cache, progress)
    unlearn_s = time.perf_counter() - t0
    after = scan.after(f"{condition}-{method}", model)
    after["forget_acc_after"] = scan.forget_acc(model, forget, poisoned)
    return {**before, **after, **scan.ibau(model, None), "matched_drop": matched,
            "hparams": hp, "unlearn_seconds": round(unlearn_s, 3)}
