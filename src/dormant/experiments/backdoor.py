"""The clean-unlearning backdoor study: for every seed, the attacker's surrogate, the weakly
poisoned victim and an unpoisoned twin (all cached), then every method under every
condition, each model scanned by Neural Cleanse, Cognitive Distillation and I-BAU.

One results row per (method, condition, seed). Rows already in ``results.jsonl`` are
skipped, so a rerun finishes only what is missing.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from dormant.attacks import PoisonSpec, Trigger, poison
from dormant.attacks.camouflage import perturb, pick_camouflage
from dormant.attacks.clean_unlearning import (
    CleanUnlearningSpec,
    Planted,
    Purity,
    attacker_seed,
    contribution_ids,
    counterweight_slots,
    draw_poisons,
    plant,
    poison_candidates,
    poisons_per_pool,
    purity_budget,
    random_request,
    select_request,
    surrogate_ids,
    target_margin,
    with_counterweights,
)
from dormant.attacks.influence import backdoor_gradient, choose_poisons
from dormant.attacks.natural import mine
from dormant.attacks.request_search import AttackerData, simulate_request
from dormant.cells import Cell, Workspace
from dormant.data import Dataset
from dormant.data.sources import default_cache_dir
from dormant.engine import Diverged, Progress, Recipe, fit, resolve_device
from dormant.errors import DormantError
from dormant.executors import execute
from dormant.executors.options import ExecutorOptions
from dormant.experiments.backdoor_scan import Scanner, defense_size
from dormant.experiments.backdoor_spec import (
    CONTROLS,
    EXACT_METHODS,
    PLAIN_CONDITIONS,
    UNLEARNING_CONDITIONS,
    BackdoorSpec,
    baseline_triggers,
)
from dormant.experiments.prepare import (
    absolute_paths,
    cached_fit,
    load_study_data,
    public_sample,
)
from dormant.experiments.profiles import profile_for
from dormant.models import ModelSpec, create_model
from dormant.rows import BackdoorRow
from dormant.store import ModelCache, ResultsLog, cache_key
from dormant.store.results import driver_lock
from dormant.unlearn import (
    StoppableHparams,
    UnlearnContext,
    UnlearnData,
    get_method,
    make_hparams,
    method_provenance,
    unlearn,
)

GRID_KEYS = {"methods", "hparams", "preset", "conditions", "seeds", "device", "data_root",
             "download"}
"""What a cell's key leaves out of the spec: the grid's axes (the cell's own method,
condition and seed, with its resolved hyper-parameters, are in it) and where the data lies
(its fingerprint is in it). The defenses' settings are in it: they decide the scan columns."""


EVAL_FOR_DIRECTION = 500
"""Evaluation images the ASR-raising direction (``_shift``) is measured on."""


@dataclass
class Victim:
    """What every cell of one seed shares."""

    seed: int
    mspec: ModelSpec
    recipe: Recipe
    num_classes: int
    attack: CleanUnlearningSpec
    x_clean: torch.Tensor
    y_clean: torch.Tensor
    planted: Planted
    attacker: AttackerData
    surrogate: nn.Module
    control: torch.Tensor
    poisoned: nn.Module
    unpoisoned: nn.Module
    keys: dict[str, str]
    baselines: dict[str, nn.Module] = field(default_factory=dict)
    doses: dict[int, nn.Module] = field(default_factory=dict)
    """Condition ``dose``'s plain backdoors of the study's trigger, by their poisons."""
    requests: dict[str, tuple[torch.Tensor, dict | None]] = field(default_factory=dict)
    asr_directions: dict[bool, torch.Tensor] = field(default_factory=dict)
    counterweights: int = 0  # natural carriers the attacker brought into its contribution
    arm: str = "natural"
    ceilings: dict[str, nn.Module] = field(default_factory=dict)
    """``poisons only``: trained without the attacker's carriers (counterweights or
    camouflage); ``no carrier at all``: without any carrier, the victim's own too."""
    purity: Purity | None = None
    carriers_first: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    """The request of condition ``carriers-first``: the camouflage, or the clean pool's
    carriers first (``strategy carriers``), as many as the attack's request holds."""
    ceiling_asr: dict[str, float] = field(default_factory=dict)

    def training_set(self, poisoned: bool) -> tuple[torch.Tensor, torch.Tensor]:
        return (self.planted.x, self.planted.y) if poisoned else (self.x_clean, self.y_clean)

    @property
    def attacker_seed(self) -> int:
        """The attacker's own seed: it never knows the victim's."""
        return attacker_seed(self.seed)


def study_recipe(spec: BackdoorSpec, ds: Dataset) -> tuple[ModelSpec, Recipe]:
    profile = profile_for(spec.dataset, len(ds.y_train), ds.image_shape)
    c, h, _ = ds.image_shape
    return (ModelSpec(spec.model or profile.model, c, ds.num_classes, h),
            spec.recipe(profile.train))


def check_spec(spec: BackdoorSpec, ds: Dataset, cache_dir: Path | None = None,
               on_budget: Callable[[int, Purity], None] | None = None) -> CleanUnlearningSpec:
    """Everything that can be wrong, refused before any training starts (the public sample's
    size against the images the dataset holds outside the victim's set, read through
    ``cache_dir``), the purity budget of every seed included (each seed's is given to
    ``on_budget``)."""
    attack = spec.attack()
    if attack.poison.trigger.counterweighted and attack.counterweights and not attack.public:
        raise DormantError("counterweights come from the attacker's public sample, and it "
                           "holds none; set public (e.g. --public 20000) or --counterweights 0")
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
    # the pool, the poison budget and the purity budget are checked by planting each seed
    # once: cheap, no training (an influence choice picks other poisons, never other counts)
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    for seed in spec.seeds:
        purity = budget(spec, attack, ds, cache_dir, seed)
        if purity.after < spec.min_purity:
            raise DormantError(
                f"seed {seed}: {purity.line()}: below min_purity {spec.min_purity:g}, so no "
                "request can wake the backdoor; lower the trigger's carrier_rate, raise its "
                "size or the poisons, or set min_purity")
        if on_budget is not None:
            on_budget(seed, purity)
    if "dose" in spec.conditions:
        counts = torch.bincount(ds.y_train, minlength=ds.num_classes)
        counts[spec.target] = len(ds.y_train)
        most = -(-max(spec.doses) // (ds.num_classes - 1))
        if most > int(counts.min()):
            raise DormantError(f"doses asks {max(spec.doses)} poisons, {most} of a class that "
                               f"has {int(counts.min())} training images; lower doses")
    defense_size(spec.defenses, len(ds.y_test))
    return attack


def budget(spec: BackdoorSpec, attack: CleanUnlearningSpec, ds: Dataset, cache_dir: Path,
           seed: int) -> Purity:
    """Seed ``seed``'s purity budget, by planting without training (random poisons)."""
    device = torch.device("cpu")
    armed = arm_attacker(spec, attack, ds, cache_dir, seed, device)
    planted = plant(ds.x_train, ds.y_train, attack, ds.num_classes, seed,
                    trigger=armed.trigger, swap=armed.swap, camouflage=_camouflage(
                        spec, attack, ds.x_train, ds.y_train, armed, None, seed, ds.num_classes))
    return purity_budget(planted, attack.poison.target, _request_size(spec, planted))


def _request_size(spec: BackdoorSpec, planted: Planted) -> int:
    """How many images the attack's request holds: the camouflage, or ``request``."""
    return len(planted.camouflage) if spec.arm == "camouflage" else spec.request


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


def _public(spec: BackdoorSpec, attack: CleanUnlearningSpec, ds: Dataset, cache_dir: Path,
            seed: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The attacker's public sample, split into its training part and its held-out part
    (a quarter, at most 500 images); empty when it holds none."""
    if attack.public == 0:
        x = torch.zeros((0, *ds.image_shape), dtype=torch.uint8, device=device)
        y = torch.zeros(0, dtype=torch.long, device=device)
        return x, y, x, y
    x, y, _ = public_sample(spec, cache_dir, attack.public, seed)
    n_eval = min(500, attack.public // 4)
    x, y = x.to(device), y.to(device)
    return x[n_eval:], y[n_eval:], x[:n_eval], y[:n_eval]


@dataclass
class Armed:
    """What the attacker holds before it chooses its poisons: its ids, the mined trigger,
    the counterweights it swaps in (None: none), its public sample (counterweights taken
    out) and its held-out evaluation images."""

    own: torch.Tensor
    trigger: Trigger
    swap: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None
    px: torch.Tensor
    py: torch.Tensor
    ex: torch.Tensor
    ey: torch.Tensor


def arm_attacker(spec: BackdoorSpec, attack: CleanUnlearningSpec, ds: Dataset,
                 cache_dir: Path, seed: int, device) -> Armed:
    """Mine the trigger on the attacker's images and bring its natural carriers from the
    public sample into its contribution (the counterweights)."""
    x, y = ds.x_train.to(device), ds.y_train.to(device)
    target = attack.poison.target
    own = contribution_ids(len(y), attack, seed).to(device)
    px, py, ex, ey = _public(spec, attack, ds, cache_dir, seed, device)
    own_x, own_y = torch.cat([x[own], px.to(x.dtype)]), torch.cat([y[own], py.to(y.dtype)])
    trigger = mine(attack.poison.trigger, own_x, own_y, target)
    if len(ex) == 0:  # no public sample: the attacker can only evaluate on its own images
        ex, ey = own_x, own_y
    swap = None
    if trigger.counterweighted and attack.counterweights:
        # the attacker's own natural carriers go into its contribution, and leave its
        # public sample (the surrogate must not see them twice)
        found = torch.nonzero(trigger.carries(px) & (py != target)).flatten()
        k = min(attack.counterweights, len(found))
        if k == 0:
            raise DormantError("the attacker's public sample holds no natural carrier of the "
                               "mined trigger; raise public or the trigger's carrier_rate")
        slots = counterweight_slots(y, own.cpu(), trigger.carries(x), target, k, seed)
        swap = (slots, px[found[:k]], py[found[:k]])
        rest = torch.ones(len(py), dtype=torch.bool, device=py.device)
        rest[found[:k]] = False
        px, py = px[rest], py[rest]
    return Armed(own, trigger, swap, px, py, ex, ey)


def _camouflage(spec: BackdoorSpec, attack: CleanUnlearningSpec, x: torch.Tensor,
                y: torch.Tensor, armed: Armed, poisons: torch.Tensor | None, seed: int,
                num_classes: int, surrogate: nn.Module | None = None
                ) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The camouflage arm's (ids, stamped images): ``spec.camouflage`` per poison, seeded
    among the contribution's clean non-target images, perturbed on ``surrogate`` when
    ``spec.camouflage_eps`` > 0. None in the natural arm."""
    if spec.arm != "camouflage":
        return None
    target = attack.poison.target
    own = armed.own.cpu()
    carriers = armed.trigger.carries(x).cpu()
    if poisons is None:
        poisons = draw_poisons(y, own, carriers, attack, num_classes, seed)
    pool = own[(y.cpu()[own] != target) & ~torch.isin(own, poisons) & ~carriers[own]]
    n = round(spec.camouflage * len(poisons))
    ids = pick_camouflage(y, pool, n, attacker_seed(seed) + 31)
    dev = ids.to(x.device)
    if surrogate is None or spec.camouflage_eps == 0:
        return ids, armed.trigger.stamp(x[dev])
    reference = armed.ex[armed.ey != target]
    return ids, perturb(surrogate, x[dev], y[dev], reference, armed.trigger, target,
                        spec.camouflage_eps)


def prepare_victim(spec: BackdoorSpec, attack: CleanUnlearningSpec, ds: Dataset, seed: int,
                   cache: ModelCache, progress: Progress | None, cache_dir: Path) -> Victim:
    """Arm the attacker (mine the trigger, choose the poisons and any camouflage, train its
    surrogate on what it knows), plant the contribution, and train the victim, its
    unpoisoned twin and the two ceilings (``Victim.ceilings``)."""
    device = resolve_device(spec.device)
    mspec, recipe = study_recipe(spec, ds)
    x, y = ds.x_train.to(device), ds.y_train.to(device)
    target = attack.poison.target
    poison_key = cache_key(data=ds.fingerprint, attack=repr(attack), seed=seed,
                           arm=spec.arm, camouflage=(spec.camouflage, spec.camouflage_eps)
                           if spec.arm == "camouflage" else None)
    armed = arm_attacker(spec, attack, ds, cache_dir, seed, device)
    own, trigger, swap, px, py = armed.own, armed.trigger, armed.swap, armed.px, armed.py
    x_own, y_own = with_counterweights(x, y, swap)
    poisons, clean = None, None
    if attack.poison_choice == "influence" or spec.camouflage_eps > 0:
        own_x = torch.cat([x_own[own], px.to(x.dtype)])
        own_y = torch.cat([y_own[own], py.to(y.dtype)])
        clean, _ = _train(cache, mspec, recipe, own_x, own_y, torch.arange(len(own_y)),
                          attacker_seed(seed) + 10_000, progress, "surrogate-clean",
                          poisons=poison_key)
    if attack.poison_choice == "influence":
        pools = poison_candidates(y_own, own.cpu(), trigger.carries(x_own), attack,
                                  ds.num_classes)
        k = poisons_per_pool(attack, ds.num_classes)
        poisons = choose_poisons(clean, x_own, y_own, torch.cat(list(pools.values())),
                                 armed.ex[armed.ey != target], trigger, target,
                                 {c: k for c in pools})
    else:
        poisons = draw_poisons(y_own, own.cpu(), trigger.carries(x_own).cpu(), attack,
                               ds.num_classes, seed)
    camo = _camouflage(spec, attack, x_own, y_own, armed, poisons, seed, ds.num_classes,
                       clean)
    planted = plant(x, y, attack, ds.num_classes, seed, trigger=trigger, poisons=poisons,
                    swap=swap, camouflage=camo)
    # what was built, not only what was asked: the poisons an influence choice made (on a
    # surrogate that another device may train differently), the trigger's mined place, the
    # counterweights' places and the camouflage
    built = cache_key(asked=poison_key, poisons=planted.poisons.tolist(),
                      trigger=repr(planted.trigger), device=device.type,
                      slots=None if swap is None else swap[0].tolist(),
                      camouflage=None if camo is None else cache_key(
                          ids=camo[0].tolist(), images=camo[1].cpu().flatten().tolist()))
    known = surrogate_ids(planted, attack).to(device)
    if attack.threat == "full":  # the ablation: the victim's whole set, nothing else
        px, py = px[:0], py[:0]
    px, py = px[: attack.surrogate_public], py[: attack.surrogate_public]
    public_rows = torch.full((len(py),), -1, dtype=torch.long)
    att = AttackerData(torch.cat([planted.x[known], px.to(x.dtype)]),
                       torch.cat([planted.y[known], py.to(y.dtype)]),
                       torch.cat([known.cpu(), public_rows]), armed.ex, armed.ey)
    everyone = torch.arange(len(y))
    # the attacker's surrogate: its own training run on what it knows, with its own seed
    surrogate, _ = _train(cache, mspec, recipe, att.x, att.y, torch.arange(len(att.y)),
                          attacker_seed(seed), progress, "surrogate", data=ds.fingerprint,
                          poisons=built)
    poisoned, pkey = _train(cache, mspec, recipe, planted.x, planted.y, everyone, seed,
                            progress, "poisoned", data=ds.fingerprint, poisons=built)
    # the twin: the same training set, the attacker's counterweights in it, no poisons
    unpoisoned, ukey = _train(cache, mspec, recipe, planted.x_clean, planted.y_clean,
                              everyone, seed, progress, "unpoisoned", data=ds.fingerprint,
                              **({"counterweights": built} if swap or camo else {}))
    ceilings = {}
    for name, drop in (("poisons only", planted.attacker_carriers),
                       ("no carrier at all", planted.carriers)):
        keep = everyone[~torch.isin(everyone, drop)]
        ceilings[name], _ = _train(cache, mspec, recipe, planted.x, planted.y, keep, seed,
                                   progress, "ceiling", data=ds.fingerprint, poisons=built,
                                   keep=cache_key(ids=keep.tolist()))
    v = Victim(seed, mspec, recipe, ds.num_classes, attack, planted.x_clean,
               planted.y_clean, planted, att, surrogate,
               torch.zeros(0, dtype=torch.long), poisoned, unpoisoned,
               {"poisoned": pkey, "unpoisoned": ukey, "attack": built},
               counterweights=0 if swap is None else len(swap[0]), arm=spec.arm,
               ceilings=ceilings,
               purity=purity_budget(planted, target, _request_size(spec, planted)))
    if spec.arm == "camouflage":
        # the request is the camouflage itself, whatever the strategy
        v.requests[""] = (planted.camouflage, None)
        v.control = random_request(planted, len(planted.camouflage), seed)
        v.carriers_first = planted.camouflage
    else:
        if attack.strategy != "simulate":
            request = select_request(surrogate, planted, attack, seed)
            v.requests[""] = (request, None)
            v.control = random_request(planted, len(request), seed, exclude=request)
        else:
            v.control = random_request(planted, attack.request, seed)
        v.carriers_first = select_request(surrogate, planted, dataclasses.replace(
            attack, strategy="carriers"), seed)
    n_base = max(1, round(spec.baseline_ratio * len(y) / (ds.num_classes - 1)))
    for name, t in baseline_triggers().items():
        if name in spec.conditions:
            p = poison(x, y, PoisonSpec(spec.target, t, n_base), ds.num_classes, seed)
            v.baselines[name], _ = _train(cache, mspec, recipe, p.x, p.y, everyone, seed,
                                          progress, name, data=ds.fingerprint,
                                          baseline=repr(t), per_class=n_base)
    if "dose" in spec.conditions:
        # the study's own trigger on the plain training set: no carrier holds it down; dose 0
        # is the plain set itself, the clean model whose ASR is every dose's floor
        for k in sorted({0, *spec.doses}):
            p = poison(x, y, PoisonSpec(target, trigger, 1), ds.num_classes, seed, total=k) \
                if k else None
            v.doses[k], v.keys[f"dose-{k}"] = _train(
                cache, mspec, recipe, x if p is None else p.x, y if p is None else p.y,
                everyone, seed, progress, f"dose {k}", data=ds.fingerprint,
                dose=None if p is None else {"trigger": repr(trigger), "target": target,
                                             "total": k, "draw": "poison-total/1"})
    return v


def request_for(v: Victim, method: str, hp: dict, cache: ModelCache,
                progress: Progress | None) -> tuple[torch.Tensor, dict | None]:
    """The attack's request against ``method`` (the same for every method unless the
    strategy is ``simulate``) and, for ``simulate``, the search's summary. The search runs
    once per (victim, method, values), whichever worker gets there first."""
    if "" in v.requests:
        return v.requests[""]
    if method in v.requests:
        return v.requests[method]
    att, planted = v.attacker, v.planted
    rows = torch.nonzero(torch.isin(att.victim_ids, planted.clean_pool)).flatten()
    key = cache_key(kind="simulate", attack=v.keys["attack"], method=method, hp=hp,
                    provenance=method_provenance(method, hp), model=v.mspec.to_dict(),
                    recipe=v.recipe.to_dict())

    def search():
        margin = target_margin(v.surrogate, att.x[rows.to(att.x.device)],
                               v.attack.poison.target)
        found = simulate_request(
            method, hp, v.surrogate, att, rows, v.attack.request, planted.trigger,
            v.attack.poison.target, recipe=v.recipe, init=lambda s=None: create_model(
                v.mspec, seed=v.attacker_seed if s is None else s),
            seed=v.attacker_seed, margin=margin, num_classes=v.num_classes,
            progress=progress)
        return {"ids": found.ids.tolist(), **found.summary()}

    record = dict(cache.build_record(key, "simulate", search))
    ids = torch.tensor(record.pop("ids"), dtype=torch.long)
    if not torch.isin(ids, planted.clean_pool).all():  # a stale or foreign record
        raise DormantError(f"the cached {method} request holds an image outside the clean "
                           f"pool; delete {cache.records} and rerun")
    found = (ids, record)
    v.requests[method] = found
    return found


def _cell_key(spec: BackdoorSpec, data: str, method: str, condition: str, seed: int,
              dose: int | None = None) -> str:
    # "none": the conditions that involve no unlearning (PLAIN_CONDITIONS)
    hp = {} if method == "none" else spec.method_hparams(method)
    made = {} if method == "none" else method_provenance(method, hp)
    return cache_key(spec=spec.model_dump(exclude=GRID_KEYS | {"doses"}), data=data,
                     hparams=hp, provenance=made, method=method, condition=condition,
                     seed=seed, **({} if dose is None else {"dose": dose}))


def _forget(v: Victim, method: str, condition: str, hp: dict, ws: Workspace) -> torch.Tensor:
    """The request ``condition`` unlearns: the random control, or the attack's request
    against ``method`` (``hp``: the attack's own values, which ``simulate`` designs for)."""
    if condition in CONTROLS:
        return v.control
    if condition == "carriers-first":
        return v.carriers_first
    return request_for(v, method, hp, ws.cache, ws.progress)[0]


def _unlearn(v: Victim, method: str, condition: str, hp: dict, forget: torch.Tensor,
             cache: ModelCache, progress: Progress | None, train_seed: int | None = None
             ) -> nn.Module:
    """The unlearned model of ``method`` under ``condition`` on ``forget``, cached: the
    strength-matched control reads the attack condition's model (to match its drop) from the
    cache. ``train_seed``: another seed for the method's own randomness and initialisation
    (retrain's repeats)."""
    poisoned = condition != "unpoisoned"
    x, y = v.training_set(poisoned)
    keep = torch.ones(len(y), dtype=torch.bool)
    keep[forget] = False
    dev = x.device
    data = UnlearnData(x, y, forget.to(dev), torch.nonzero(keep).flatten().to(dev),
                       forget.to(dev), v.num_classes)
    base = v.poisoned if poisoned else v.unpoisoned
    seed = v.seed if train_seed is None else train_seed
    ctx = UnlearnContext(v.recipe, lambda s=None: create_model(
        v.mspec, seed=seed if s is None else s), seed, progress)
    key = cache_key(kind="backdoor-unlearned", base=v.keys["poisoned" if poisoned
                                                           else "unpoisoned"],
                    forget=cache_key(ids=forget.tolist()), method=method, hp=hp,
                    provenance=method_provenance(method, hp),
                    **({} if train_seed is None else {"train_seed": train_seed}))

    def run():
        model = unlearn(method, base, data, ctx, **hp)
        if not all(torch.isfinite(p).all() for p in model.parameters()):
            raise Diverged(f"{method} produced non-finite weights")
        return model, {}

    model, _ = cached_fit(cache, key, v.mspec, dev, run,
                          {"kind": "unlearned", "method": method, "seed": seed,
                           "condition": condition})
    return model


class BackdoorCell(Cell):
    """One backdoor row: ``method`` under ``condition`` for ``seed``."""

    spec: BackdoorSpec
    model_name: str
    method: str
    condition: str
    seed: int
    dose: int | None = None
    """Condition ``dose``: the poisons of the plain backdoor it scans."""

    @property
    def label(self) -> str:
        dose = "" if self.dose is None else f" {self.dose} poisons"
        return f"{self.method} {self.condition}{dose} seed {self.seed}"

    def _coords(self) -> dict:
        trigger, spec = self.spec.trigger, self.spec
        strategy = ("random" if self.condition in CONTROLS else "carriers"
                    if self.condition == "carriers-first" or spec.arm == "camouflage"
                    else spec.strategy)
        return {"cell": self.key, "dataset": spec.dataset, "model": self.model_name,
                "method": self.method, "condition": self.condition, "seed": self.seed,
                "target": spec.target, "arm": spec.arm, "strategy": strategy,
                "trigger": trigger.kind, "amplitude": trigger.amplitude,
                **({} if self.dose is None else {"dose": self.dose})}

    def failed(self, error: str) -> BackdoorRow:
        return BackdoorRow(**self._coords(), status="failed", error=error)

    def run(self, ws: Workspace) -> BackdoorRow:
        spec = self.spec
        v, scan = _victim(ws, spec, self.seed)
        trigger = v.planted.trigger
        base = {**self._coords(), "poisons": len(v.planted.poisons),
                "threat": v.attack.threat, "poison_choice": v.attack.poison_choice,
                "counterweights": v.counterweights,
                "camouflage": len(v.planted.camouflage),
                "trigger_row": trigger.row, "trigger_col": trigger.col,
                **v.purity.columns(), **_ceilings(v, scan, spec)}
        t0 = time.perf_counter()
        try:
            row = _run_cell(spec, v, scan, self, ws)
        except Diverged as e:
            return BackdoorRow(**base, status="failed", error=f"unlearning diverged: {e}")
        return BackdoorRow(**{**base, **row}, status="ok",
                           seconds=round(time.perf_counter() - t0, 3))


def _victim(ws: Workspace, spec: BackdoorSpec, seed: int) -> tuple[Victim, Scanner]:
    """The seed's victim (surrogate, request, poisoned and unpoisoned models) and its
    scanner, once per worker process; the models come from the cache."""
    data = spec.model_dump(include={"dataset", "data_root", "train_size", "test_size"})
    ds = ws.remember(("dataset", cache_key(**data)),
                     lambda: load_study_data(spec, ws.cache_dir), keep=1)

    def make():
        v = prepare_victim(spec, spec.attack(), ds, seed, ws.cache, ws.progress, ws.cache_dir)
        return v, Scanner(spec, ds, v, ws.out, ws.progress)

    return ws.remember(("victim", cache_key(spec=spec.model_dump()), seed), make)


CEILINGS = {"poisons only": "asr_ceiling", "no carrier at all": "asr_ceiling_no_carriers"}


def _ceilings(v: Victim, scan: Scanner, spec: BackdoorSpec) -> dict:
    """The two ceilings' ASRs (measured once per victim) and whether the seed is armed: its
    *poisons only* ceiling reaches ``spec.armed_asr``."""
    if not v.ceiling_asr:
        v.ceiling_asr = {col: scan.metrics(v.ceilings[name])["asr"]
                         for name, col in CEILINGS.items()}
    return {**v.ceiling_asr, "armed": v.ceiling_asr["asr_ceiling"] >= spec.armed_asr}


def backdoor_cells(spec: BackdoorSpec, ds: Dataset, cache_dir: Path | None = None,
                   on_budget: Callable[[int, Purity], None] | None = None
                   ) -> list[BackdoorCell]:
    """Every (method, condition, seed) as a cell, after every check. The attack condition
    comes first: the strength-matched control needs its unlearned model (which it builds
    itself, through the cache, if it gets there first)."""
    check_spec(spec, ds, cache_dir, on_budget)
    mspec, _ = study_recipe(spec, ds)
    cell_spec = absolute_paths(spec)  # workers elsewhere must find the same files
    order = {"attack": 0}
    cells = []
    # seed innermost: workers that start together train different seeds' victims
    for cond in sorted(spec.conditions, key=lambda c: order.get(c, 1)):
        methods = ([m for m in spec.methods if m in EXACT_METHODS]
                   if cond == "carriers-first" else spec.methods
                   if cond in UNLEARNING_CONDITIONS else ["none"])
        for m in methods:
            for dose in spec.doses if cond == "dose" else [None]:
                for seed in spec.seeds:
                    cells.append(BackdoorCell(
                        key=_cell_key(spec, ds.fingerprint, m, cond, seed, dose),
                        spec=cell_spec, model_name=mspec.name, method=m, condition=cond,
                        seed=seed, dose=dose))
    return cells


def run_backdoor(
    spec: BackdoorSpec,
    out: Path,
    *,
    cache_dir: Path | None = None,
    progress: Progress | None = None,
    on_row: Callable[[dict], None] | None = None,
    executor: ExecutorOptions | None = None,
    on_budget: Callable[[int, Purity], None] | None = None,
) -> list[dict]:
    """Run every missing cell of the study on ``executor`` (default: in this process);
    returns all rows of ``out/results.jsonl``. ``on_budget`` gets every seed's purity budget
    before anything trains."""
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    log = ResultsLog(out, on_row)
    ds = load_study_data(spec, cache_dir)
    cells = backdoor_cells(spec, ds, cache_dir, on_budget)
    with driver_lock(out):
        execute(cells, log, cache_dir, out, executor or ExecutorOptions(), progress)
    return log.read()


def _hparams(spec: BackdoorSpec, v: Victim, method: str, condition: str, scan: Scanner,
             ws: Workspace) -> tuple[dict, float | None]:
    hp = spec.method_hparams(method)
    matchable = method != "retrain" and issubclass(get_method(method).hparams,
                                                   StoppableHparams)
    if condition != "random-clean" or not spec.strength_match or not matchable:
        return hp, None
    forget = _forget(v, method, "attack", hp, ws)
    try:  # the attack condition's model: built by its own cell, or here, once
        attacked = _unlearn(v, method, "attack", hp, forget, ws.cache, ws.progress)
    except Diverged:
        return hp, None
    drop = (scan.forget_acc(v.poisoned, forget, True) - scan.forget_acc(attacked, forget, True))
    before = scan.forget_acc(v.poisoned, v.control, poisoned=True)
    hp = {**hp, "stop_acc": before - drop}
    steps = make_hparams(method, hp).steps
    hp["steps"] = max(steps, round(steps * spec.match_budget))
    return hp, round(drop, 4)


def _before(ws: Workspace, scan: Scanner, v: Victim, name: str, model: nn.Module,
            trigger) -> dict:
    """The scan of a model no method has touched: once per model, study and output folder
    (its artefacts are written there), whichever worker gets there first."""
    key = cache_key(kind="scan-before", model=v.keys.get(name, name), seed=v.seed,
                    spec=scan.spec.model_dump(exclude={"methods", "hparams", "preset",
                                                       "conditions", "seeds", "device"}),
                    out=str(ws.out.resolve()))
    return dict(ws.cache.build_record(key, "scan", lambda: scan.before(name, model, trigger)))


def _run_cell(spec, v: Victim, scan: Scanner, cell: BackdoorCell, ws: Workspace) -> dict:
    method, condition = cell.method, cell.condition
    if condition in PLAIN_CONDITIONS:
        return _plain(v, scan, cell, ws)
    poisoned = condition != "unpoisoned"
    base = v.poisoned if poisoned else v.unpoisoned
    hp, matched = _hparams(spec, v, method, condition, scan, ws)
    forget = _forget(v, method, condition, spec.method_hparams(method), ws)
    design = None if condition in (*CONTROLS, "carriers-first") else request_for(
        v, method, spec.method_hparams(method), ws.cache, ws.progress)[1]
    before = _before(ws, scan, v, "poisoned" if poisoned else "unpoisoned", base, None)
    before["forget_acc_before"] = scan.forget_acc(base, forget, poisoned)
    t0 = time.perf_counter()
    model = _unlearn(v, method, condition, hp, forget, ws.cache, ws.progress)
    unlearn_s = time.perf_counter() - t0
    after = scan.after(f"{condition}-{method}", model)
    after["forget_acc_after"] = scan.forget_acc(model, forget, poisoned)
    out = {**before, **after, **scan.mitigate(model, None), "matched_drop": matched,
           "hparams": hp, "unlearn_seconds": round(unlearn_s, 3),
           "forget_size": len(forget),
           "carriers": int(torch.isin(forget.cpu(), v.planted.carriers).sum()),
           "attacker_carriers": len(v.planted.attacker_carriers),
           "design": design}
    out.update(_shift(v, scan, base, model, poisoned))
    if not _same_architecture(model, base):
        out.update(_own_before(spec, v, method, forget, scan, ws, poisoned))
    if method == "retrain" and spec.retrain_seeds > 1:
        out.update(_retrain_repeats(spec, v, condition, hp, forget, scan, ws, after))
    return out


def _plain(v: Victim, scan: Scanner, cell: BackdoorCell, ws: Workspace) -> dict:
    """A model scanned as it was trained: the dormant victim (``none``), a baseline's
    (``badnets``, ``blended``: their own trigger) or a dose's (the study's trigger). The
    dormant row also holds ``asr_floor``, the unpoisoned twin's ASR, and a dose row the
    ASR of dose 0, the clean model trained on the plain set: I-BAU's dose rule reads it."""
    condition = cell.condition
    if condition == "dose":  # floor: the plain training set, the doses' own
        model, trigger, name = v.doses[cell.dose], None, f"dose-{cell.dose}"
        extra = {"asr_floor": scan.metrics(v.doses[0])["asr"], "poisons": cell.dose}
    elif condition == "none":  # floor: the same training set without the poisons
        model, trigger, name = v.poisoned, None, "poisoned"
        extra = {"asr_floor": scan.metrics(v.unpoisoned)["asr"]}
    else:
        model, trigger, name = v.baselines[condition], baseline_triggers()[condition], condition
        extra = {}
    before = _before(ws, scan, v, name, model, trigger)
    after = {k.replace("_before", "_after"): val for k, val in before.items()
             if k.endswith("_before")}
    out = {**before, **after, **scan.mitigate(model, trigger), **extra,
           "matched_drop": None, "artefact_after": before["artefact_before"]}
    if trigger is not None:
        out.update(trigger=trigger.kind, amplitude=trigger.amplitude)
    return out


def _same_architecture(a: nn.Module, b: nn.Module) -> bool:
    return [n for n, _ in a.named_parameters()] == [n for n, _ in b.named_parameters()]


def _own_before(spec, v: Victim, method: str, forget: torch.Tensor, scan: Scanner,
                ws: Workspace, poisoned: bool) -> dict:
    """A method that trains a model of its own (SISA's ensemble) has its own "before": that
    model with nothing deleted, once per seed and base, through the cache. Its ASR and clean
    accuracy, which the report reads as this method's dormant level instead of the
    monolithic victim's."""
    own = _unlearn(v, method, "before" if poisoned else "unpoisoned",
                   spec.method_hparams(method), forget[:0], ws.cache, ws.progress)
    m = scan.metrics(own)
    return {"asr_before_own": m["asr"], "clean_acc_before_own": m["clean_acc"]}


def _shift(v: Victim, scan: Scanner, base: nn.Module, model: nn.Module, poisoned: bool
           ) -> dict:
    """Where the method moved the weights: the L2 length of the move, and its cosine with
    the direction that raises the ASR fastest on the starting model (minus the gradient of
    the backdoor loss on the evaluation half's non-target images; 1: straight at the
    backdoor)."""
    if poisoned not in v.asr_directions:
        x = scan.x_eval[scan.y_eval != v.attack.poison.target][:EVAL_FOR_DIRECTION]
        v.asr_directions[poisoned] = -backdoor_gradient(base.eval(), x, v.planted.trigger,
                                                        v.attack.poison.target)
    up = v.asr_directions[poisoned]
    if not _same_architecture(model, base):
        return {"weight_shift": None, "shift_asr_cos": None}  # another architecture (SISA)
    delta = torch.cat([(p.detach() - q.detach()).flatten().float() for (_, p), (_, q) in
                       zip(model.named_parameters(), base.named_parameters(), strict=True)])
    norm = float(delta.norm())
    cos = float(delta @ up.to(delta.device)) / max(1e-12, norm * float(up.norm()))
    return {"weight_shift": round(norm, 4), "shift_asr_cos": round(cos, 4)}


def _retrain_repeats(spec, v: Victim, condition: str, hp: dict, forget: torch.Tensor,
                     scan: Scanner, ws: Workspace, first: dict) -> dict:
    """Retrain's request under ``spec.retrain_seeds`` training seeds: the ASR and clean
    accuracy after are their means (the scans stay the first seed's), with every seed's ASR
    and the spread kept."""
    asr, clean = [first["asr_after"]], [first["clean_acc_after"]]
    for k in range(1, spec.retrain_seeds):
        model = _unlearn(v, "retrain", condition, hp, forget, ws.cache, ws.progress,
                         train_seed=v.seed + 1000 * k)
        m = scan.metrics(model)
        asr.append(m["asr"])
        clean.append(m["clean_acc"])
    t_asr, t_clean = torch.tensor(asr), torch.tensor(clean)
    return {"asr_after": round(float(t_asr.mean()), 4),
            "clean_acc_after": round(float(t_clean.mean()), 4),
            "asr_after_seeds": asr, "asr_after_sd": round(float(t_asr.std()), 4)}
