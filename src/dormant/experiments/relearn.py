"""The relearning study as cells: one per (pipeline x seed x forget set x k x relearn set x
attack setting), each writing one ``RelearnRow``. A cell builds what it needs through the
cache (the seed's original and oracle, the first seed's calibration of its pipeline, the
unlearned model and its analysis), once whichever worker gets there first, then attacks.

Rows already in ``results.jsonl`` are skipped, so a rerun after a crash finishes only the
missing cells and duplicates none. A cell that fails for any reason (a diverging loss
included) is written as a failed row with its error, and the study goes on.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from dormant.attacks import RelearnConfig, RelearnData, relearn
from dormant.cells import Cell, Workspace
from dormant.data import Dataset
from dormant.data.forget import check_leaves_retain, load_cscores, parse_forget, planned_size
from dormant.data.sources import default_cache_dir
from dormant.data.split import leakable_count
from dormant.engine import Diverged, Progress, evaluate
from dormant.errors import DormantError
from dormant.executors import execute
from dormant.executors.options import ExecutorOptions
from dormant.experiments.analysis import Probe, analyse, make_probe, mia
from dormant.experiments.calibrate import Calibration, calibrate
from dormant.experiments.membership import (
    PER_EXAMPLE,
    design,
    lira_columns,
    train_part,
    ulira_columns,
    ulira_models,
)
from dormant.experiments.pipeline import Pipeline, resolve
from dormant.experiments.prepare import (
    Prepared,
    absolute_paths,
    cached_fit,
    forget_sets,
    load_study_data,
    prepare,
)
from dormant.experiments.profiles import Profile, profile_for
from dormant.experiments.protocol import PROTOCOL
from dormant.experiments.spec import RelearnSpec
from dormant.metrics import aurc, comparable, l2_distance, recovery, tow
from dormant.models import ModelSpec, create_model
from dormant.rows import RelearnRow, ShadowRow
from dormant.store import ModelCache, ResultsLog, cache_key
from dormant.store.results import driver_lock
from dormant.unlearn import (
    StoppableHparams,
    get_method,
    method_provenance,
    resolve_hparams,
    unlearn,
)

GRID_KEYS = {"methods", "hparams", "preset", "k", "seeds", "forget", "relearn_sets", "attack_lr",
             "attack_steps", "device", "calibrate", "stop"}


def base_hparams(spec: RelearnSpec, profile: Profile, n_train: int, method: str,
                 user: dict) -> dict:
    """``resolve_hparams`` under ``spec.preset`` (None: the dataset profile's preset), with
    ``unlearn_steps``/``unlearn_lr`` (step-based methods), then the user's own overrides on
    top; checked. Everything a method runs with that is known before any training."""
    over: dict = {}
    if "steps" in get_method(method).defaults():
        over.update({k: v for k, v in (("steps", spec.unlearn_steps), ("lr", spec.unlearn_lr))
                     if v})
    return resolve_hparams(method, spec.preset or profile.preset, {**over, **user},
                           n_train=n_train)


def method_hparams(spec: RelearnSpec, prep: Prepared, method: str, user: dict) -> dict:
    """``base_hparams`` with, under ``stop: oracle-leakable``, the oracle's accuracy on the
    leakable ids as the stop target (unless the user set one)."""
    hp = base_hparams(spec, prep.profile, len(prep.dataset.y_train), method, user)
    if issubclass(get_method(method).hparams, StoppableHparams) and \
            spec.stop == "oracle-leakable" and "stop_acc" not in user:
        hp = {**hp, "stop_acc": prep.oracle_monitor_acc}
    return hp


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
        n_forget = planned_size(fspec, ds.y_train, ds.num_classes)
        check_leaves_retain(fspec, n_forget, len(ds.y_train))
        n_leak = leakable_count(n_forget)
        if set(spec.mia) & set(PER_EXAMPLE) and n_forget - n_leak >= len(ds.y_test):
            raise DormantError(
                f"mia {'/'.join(a for a in spec.mia if a in PER_EXAMPLE)} audits the "
                f"{n_forget - n_leak} held-out forget examples against as many test images, "
                f"and RMIA needs more beside them, but the test set has {len(ds.y_test)}; "
                "raise test_size or use a smaller forget set")
        if max(spec.k) > n_leak:
            raise DormantError(
                f"k={max(spec.k)} leaked examples asked for, but at most {n_leak} of the "
                f"forget set {fspec.text} are leakable; pick k <= {n_leak} or a larger forget set"
            )
        if spec.cscores and fspec.needs_scores:
            load_cscores(Path(spec.cscores), len(ds.y_train))
        # the analysis clamps its default to the data; another size is given or refused (by
        # value, not by whether the key was set: a spec read back from its dump sets them all)
        most = min(len(ds.y_train) - n_forget, len(ds.y_test))
        default = type(spec).model_fields["analysis_size"].default
        if spec.analysis and spec.analysis_size != default and spec.analysis_size > most:
            raise DormantError(
                f"analysis_size {spec.analysis_size:,}: the analysis evaluates that many "
                f"retain and test images, but forget {fspec.text} leaves "
                f"{len(ds.y_train) - n_forget:,} to retain and the test set has "
                f"{len(ds.y_test):,}; set analysis_size <= {most:,}")
    if spec.relearn_sets == ["forget-only"] and spec.k == [0]:
        raise DormantError("relearn set forget-only needs some k >= 1; with k = 0 the grid "
                           "has no cells")
    create_model(ModelSpec(spec.model or profile.model, ds.image_shape[0], ds.num_classes,
                           ds.image_shape[1]))
    return pipelines


class RelearnCell(Cell):
    """One relearning row: a pipeline, seed and forget set, attacked with ``k`` leaked
    examples on one relearn set at one learning rate and step budget."""

    spec: RelearnSpec
    model_name: str
    pipeline: str
    seed: int
    forget: str
    k: int
    relearn_set: str
    attack_lr: float
    attack_steps: int

    @property
    def label(self) -> str:
        return (f"{self.pipeline} seed {self.seed} k={self.k} {self.relearn_set} "
                f"lr {self.attack_lr:.0e}")

    def _coords(self) -> dict:
        return {"cell": self.key, "dataset": self.spec.dataset, "model": self.model_name,
                "method": self.pipeline, "seed": self.seed, "forget": self.forget, "k": self.k,
                "relearn_set": self.relearn_set, "attack_lr": self.attack_lr,
                "attack_steps": self.attack_steps}

    def failed(self, error: str) -> RelearnRow:
        return RelearnRow(**self._coords(), status="failed", error=error)

    def run(self, ws: Workspace) -> RelearnRow:
        spec = self.spec
        prep = _prepared(ws, spec, self.seed, self.forget)
        pipe = next(p for p in resolve(spec) if p.name == self.pipeline)
        if pipe.is_reference:
            stage_hps, cal = [{}], []
        else:
            # each seed's own budgets and stop target, then the first seed's strengths
            stage_hps = [method_hparams(spec, prep, s.method, s.hparams) for s in pipe.stages]
            cal = _calibration(ws, spec, self.forget, pipe)
            for c in cal:
                stage_hps[c.stage][c.param] = c.chosen
        common = {**self._coords(), "hparams": stage_hps[-1],
                  "pipeline": [[s.method, hp] for s, hp in zip(pipe.stages, stage_hps,
                                                               strict=True)],
                  "calibration": [c.to_dict() for c in cal], "protocol": PROTOCOL.tag,
                  "fit_target": spec.fit_target}
        t0 = time.perf_counter()
        try:
            model, key = unlearned_model(prep, pipe, stage_hps, ws.cache, ws.progress)
        except Diverged as e:
            return RelearnRow(**common, status="failed", error=f"unlearning diverged: {e}")
        unlearn_s = time.perf_counter() - t0
        before = _measure(prep, model)
        probe, extra = None, {}
        if spec.analysis:
            # keyed by what the probe is drawn from: the split and the seed fix its images
            probe = ws.remember(("probe", prep.original_key, prep.split.hash, prep.seed,
                                 spec.analysis_size),
                                lambda: make_probe(prep, spec.analysis_size))
            extra = ws.cache.build_record(
                cache_key(kind="analysis", model=key, oracle=prep.oracle_key, seed=prep.seed,
                          size=spec.analysis_size, lmc_points=spec.lmc_points),
                "analysis", lambda: analyse(prep, probe, model, pipe.name == "original",
                                            spec.lmc_points))
        extra = {k: v for k, v in extra.items() if _wanted(spec, k)}
        audit = _Audit(ws, spec, prep, pipe, stage_hps, self) \
            if set(spec.mia) & set(PER_EXAMPLE) else None
        if audit is not None:
            extra |= audit.before(model)
        try:
            row = _attack_row(spec, prep, probe, model, before["forget_acc"], self, audit)
        except Diverged as e:
            return RelearnRow(**common, status="failed", error=f"attack diverged: {e}")
        return RelearnRow(**common, **before, **row, **extra,
                          unlearn_seconds=round(unlearn_s, 3),
                          seconds=round(unlearn_s + row["attack_seconds"], 3))


def _wanted(spec: RelearnSpec, column: str) -> bool:
    """The population attacks' columns only where ``mia`` asks for them."""
    if column.startswith("mia_loss_auc"):
        return "loss" in spec.mia
    if column.startswith("mia_auc"):
        return "svc" in spec.mia
    return True


class _Audit:
    """A cell's per-example membership inference (``dormant.experiments.membership``): the
    seed's design once per worker, U-LiRA's unlearned models per pipeline (cached), the
    cell's attack on both sides of every split."""

    def __init__(self, ws: Workspace, spec: RelearnSpec, prep: Prepared, pipe: Pipeline,
                 stage_hps: list[dict], cell: RelearnCell) -> None:
        self.ws, self.spec, self.prep, self.cell = ws, spec, prep, cell
        self.design = ws.remember(
            ("mia-design", prep.original_key, prep.split.hash, spec.shadows),
            lambda: design(prep, spec.shadows, ws.cache, ws.progress), keep=1)
        if pipe.name == "original":
            self.stages: list = []
        elif pipe.name == "retrain":
            self.stages = [("retrain", {})]
        else:
            self.stages = [(st.method, hp) for st, hp in zip(pipe.stages, stage_hps,
                                                             strict=True)]
        self._pairs = None

    def pairs(self):
        if self._pairs is None:
            self._pairs = ulira_models(self.design, self.prep, self.stages, self.ws.cache,
                                       self.ws.progress)
        return self._pairs

    def before(self, model: nn.Module) -> dict:
        d, spec = self.design, self.spec
        out = {**d.labels(), **lira_columns(d, model, self.prep.recipe, spec.mia)}
        if "ulira" in spec.mia:
            key = cache_key(kind="study-ulira", layout=2, original=self.prep.original_key,
                            split=self.prep.split.hash, shadows=spec.shadows,
                            stages=[_keyed(m, hp) for m, hp in self.stages])
            out |= self.ws.cache.build_record(key, "ulira", lambda: ulira_columns(
                d, self.prep, *self.pairs()))
        return out

    def after(self, attacked: nn.Module, attack) -> dict:
        """The same attacks on the attacked model; U-LiRA with the cell's ``attack`` applied
        to every split's unlearned and retrained model alike."""
        d = self.design
        out = lira_columns(d, attacked, self.prep.recipe, self.spec.mia, "_attacked")
        if "ulira" in self.spec.mia:
            s, u = self.pairs()
            # every reference is attacked (each is in the references' fits); an unlearned
            # model only where its split forgot something (the others are in no fit)
            r = [attack(m, i, s) for i, m in enumerate(s.retrained)]
            u = [attack(m, i, s) if len(s.forgets[i]) else r[i] for i, m in enumerate(u)]
            out |= ulira_columns(d, self.prep, s, u, r, "_attacked")
        return out


def fit_note(row: dict) -> str | None:
    """One line when the row's original stopped at its step cap short of ``fit_target``: it
    did not memorise its training set as the study assumes, so forgetting has less to
    remove."""
    fit, target = row.get("train_fit_acc"), row.get("fit_target")
    if fit is None or target is None or fit >= target:
        return None
    return (f"note: seed {row.get('seed')}'s original fits {fit:.1f}% of its training set, "
            f"below fit_target {target:g}%: it stopped at its step cap "
            f"({row.get('train_steps')} steps); raise train_steps for a memorising original")


def _prepared(ws: Workspace, spec: RelearnSpec, seed: int, forget: str) -> Prepared:
    """The seed's data, split, original and oracle, once per worker process."""
    data = spec.model_dump(include={"dataset", "data_root", "train_size", "test_size"})
    ds = ws.remember(("dataset", cache_key(**data)),
                     lambda: load_study_data(spec, ws.cache_dir), keep=1)
    return ws.remember(("prepared", cache_key(spec=spec.model_dump()), seed, forget),
                       lambda: prepare(spec, ds, seed, ws.cache, ws.progress, forget))


def _calibration(ws: Workspace, spec: RelearnSpec, forget: str, pipe: Pipeline
                 ) -> list[Calibration]:
    """The strengths chosen on the study's first seed (``calibrate: oracle``), computed by
    whichever cell needs them first and read from the cache by all the others."""
    if pipe.calibration(spec) != "oracle":
        return []
    prep = _prepared(ws, spec, spec.seeds[0], forget)
    hps = [method_hparams(spec, prep, s.method, s.hparams) for s in pipe.stages]
    key = cache_key(kind="calibration", original=prep.original_key, split=prep.split.hash,
                    protocol=PROTOCOL.tag,
                    stages=[_keyed(s.method, hp) for s, hp in zip(pipe.stages, hps, strict=True)],
                    user=[s.hparams for s in pipe.stages])
    found = ws.cache.build_record(key, "calibration", lambda: [c.to_dict() for c in calibrate(
        prep, pipe, hps, [s.hparams for s in pipe.stages],
        lambda p, h: unlearned_model(prep, p, h, ws.cache, ws.progress)[0])])
    return [Calibration(**c) for c in found]


def _keyed(method: str, hp: dict) -> list:
    """A stage as a cache key holds it: the method, the values the study resolved, and its
    provenance (every value it runs with, class defaults included, and its code revision),
    so a changed default or a fixed bug never serves a stale model, calibration or row."""
    return [method, hp, method_provenance(method, hp)]


REFERENCE_FREE = {"preset", "unlearn_steps", "unlearn_lr", "data_root", "download"}
"""Spec keys that a row's key leaves out: the methods' settings (the resolved values are in
the key instead, and the reference models use none) and where the data lies (its content
fingerprint is in the key instead)."""


def _idle_membership_keys(spec: RelearnSpec) -> set[str]:
    """``mia`` at its default and ``shadows`` with no per-example attack change no row, so
    they leave the cell keys as they were before these keys existed."""
    idle = set()
    if spec.mia == RelearnSpec.model_fields["mia"].get_default(call_default_factory=True):
        idle.add("mia")
    if not set(spec.mia) & set(PER_EXAMPLE):
        idle.add("shadows")
    return idle


def relearn_cells(spec: RelearnSpec, ds: Dataset) -> list[RelearnCell]:
    """The study's grid as cells, after every check.

    Ordered attack setting (k, relearn set, lr, steps), forget set, pipeline, then seed:
    workers that start together take different seeds and pipelines, so they train different
    originals instead of waiting on one another's lock. Under ``calibrate: oracle`` the
    first seed's cells come first, pipelines interleaved, since every later seed waits on
    that seed's calibration of its pipeline. ``dormant plan``'s simulation (costs: original
    100, unlearning 30, attack 10) chose this: ``configs/mnist-quick.yaml`` on 2 workers
    3,136 against 3,336 seed-major and 4,334 seed-last; the paper's grid on digits (3 seeds,
    k = 0, 1, 2) on 8 workers 1,399 against 1,807 seed-major with ``calibrate: none``, and
    1,898 against 2,068 with ``oracle``.

    A cell's key hashes what decides its row: the spec without its grid axes and data paths,
    the data's fingerprint, the pipeline's stages with their resolved hyper-parameters (so a
    preset whose values change gets new rows), the calibration protocol, and the cell's
    coordinates."""
    pipelines = check_spec(spec, ds)
    profile = profile_for(spec.dataset, len(ds.y_train), ds.image_shape)
    model_name = spec.model or profile.model
    n_train = len(ds.y_train)
    shared = cache_key(spec=spec.model_dump(exclude=GRID_KEYS | REFERENCE_FREE |
                                            _idle_membership_keys(spec)),
                       data=ds.fingerprint)
    def protocol(pipe: Pipeline) -> dict:
        cal = pipe.calibration(spec)
        return {"calibrate": cal, "stop": spec.stop, "protocol": PROTOCOL.tag,
                "calibration_seed": spec.seeds[0] if cal == "oracle" else None}

    stages = {p.name: [[s.method, s.hparams] if p.is_reference else
                       _keyed(s.method, base_hparams(spec, profile, n_train, s.method,
                                                     s.hparams))
                       for s in p.stages] for p in pipelines}
    cell_spec = absolute_paths(spec)  # workers elsewhere must find the same files
    cells = []
    for k in spec.k:
        for rs in spec.relearn_sets:
            if rs == "forget-only" and k == 0:
                continue  # nothing to train on; the seed code omits it too
            for lr, steps in attack_settings(spec, profile):
                for forget, where in zip(forget_sets(spec, profile),
                                         forget_sets(cell_spec, profile), strict=True):
                    for pipe in pipelines:
                        how = {} if pipe.is_reference else protocol(pipe)
                        for seed in spec.seeds:
                            key = cache_key(base=shared, method=pipe.name,
                                            stages=stages[pipe.name], **how, seed=seed,
                                            forget=forget, k=k, rs=rs, lr=lr, steps=steps)
                            cells.append(RelearnCell(
                                key=key, spec=cell_spec, model_name=model_name,
                                pipeline=pipe.name, seed=seed, forget=where, k=k,
                                relearn_set=rs, attack_lr=lr, attack_steps=steps))
    # a stable sort: the first seed's cells, then the rest
    if any(p.calibration(spec) == "oracle" for p in pipelines):
        cells.sort(key=lambda c: c.seed != spec.seeds[0])
    return cells


class ShadowCell(Cell):
    """Shadows ``part`` of one seed's membership design (``dormant.experiments.membership``),
    trained into the cache, so that a study's workers share out a seed's shadows before its
    cells need them instead of waiting on one another's locks."""

    spec: RelearnSpec
    model_name: str
    seed: int
    forget: str
    part: list[int]

    @property
    def label(self) -> str:
        return f"shadows {self.part[0] + 1}-{self.part[-1] + 1} seed {self.seed}"

    def _coords(self) -> dict:
        return {"cell": self.key, "dataset": self.spec.dataset, "model": self.model_name,
                "method": "shadows", "seed": self.seed, "forget": self.forget,
                "shadows": self.part}

    def failed(self, error: str) -> ShadowRow:
        return ShadowRow(**self._coords(), status="failed", error=error)

    def run(self, ws: Workspace) -> ShadowRow:
        t0 = time.perf_counter()
        prep = _prepared(ws, self.spec, self.seed, self.forget)
        train_part(prep, self.spec.shadows, self.part, ws.cache, ws.progress)
        return ShadowRow(**self._coords(), seconds=round(time.perf_counter() - t0, 3))


def shadow_cells(cells: list[RelearnCell], parts: int) -> list[ShadowCell]:
    """Each (seed, forget set) of ``cells``' study in ``parts`` shares of its shadows (one per
    worker, at most one shadow each)."""
    if not cells or not set(cells[0].spec.mia) & set(PER_EXAMPLE):
        return []
    spec = cells[0].spec
    n = spec.shadows
    parts = max(1, min(parts, n))
    shares = [list(range(n))[i::parts] for i in range(parts)]
    out, seen = [], set()
    for c in cells:
        if (c.seed, c.forget) in seen:
            continue
        seen.add((c.seed, c.forget))
        for share in shares:
            key = cache_key(kind="shadow-cell", spec=spec.model_dump(exclude=GRID_KEYS),
                            seed=c.seed, forget=c.forget, part=share)
            out.append(ShadowCell(key=key, spec=spec, model_name=c.model_name, seed=c.seed,
                                  forget=c.forget, part=share))
    return out


def run_relearn(
    spec: RelearnSpec,
    out: Path,
    *,
    cache_dir: Path | None = None,
    progress: Progress | None = None,
    on_row: Callable[[dict], None] | None = None,
    executor: ExecutorOptions | None = None,
) -> list[dict]:
    """Run every missing cell of the study on ``executor`` (default: in this process);
    returns all rows of ``out/results.jsonl``."""
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    log = ResultsLog(out, on_row)
    ds = load_study_data(spec, cache_dir)
    cells = relearn_cells(spec, ds)
    executor = executor or ExecutorOptions()
    with driver_lock(out):
        # per-example membership inference: the seeds' shadows first, shared out among the
        # workers, into the cache every cell then reads (their rows: OUT/shadows/)
        parts = 1 if executor.executor == "serial" else (executor.workers or os.cpu_count() or 1)
        shadows = shadow_cells(cells, parts)
        if shadows:
            execute(shadows, ResultsLog(out / "shadows"), cache_dir, out, executor, progress)
        execute(cells, log, cache_dir, out, executor, progress)
    return log.read()


def _check_finite(model: nn.Module, name: str) -> nn.Module:
    if not all(torch.isfinite(p).all() for p in model.parameters()):
        raise Diverged(f"{name} produced non-finite weights")
    return model


def unlearned_model(prep: Prepared, pipe: Pipeline, stage_hps: list[dict], cache: ModelCache,
                    progress: Progress | None) -> tuple[nn.Module, str]:
    """``(model, cache key)``: the pipeline's stages run from the original; every stage's
    result is cached, so chains that share a first stage train it once."""
    if pipe.name == "original":
        return prep.original, prep.original_key
    if pipe.name == "retrain":
        return prep.oracle, prep.oracle_key
    model, prev = prep.original, None
    # theta_pre stays the original in every stage of a then: chain
    ctx = dataclasses.replace(prep.context(progress), pretrained=prep.original)
    for stage, hp in zip(pipe.stages, stage_hps, strict=True):
        parts = dict(kind="unlearned", original=prep.original_key, split=prep.split.hash,
                     method=stage.method, hp=hp, provenance=method_provenance(stage.method, hp))
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
    return model, prev


def _measure(prep: Prepared, model: nn.Module) -> dict:
    retain = evaluate(model, prep.x, prep.y, prep.split.retain.to(prep.x.device)).acc
    forget = evaluate(model, prep.x, prep.y, prep.split.heldout.to(prep.x.device)).acc
    test = evaluate(model, prep.x_test, prep.y_test).acc
    return {"retain_acc": round(retain, 4), "forget_acc": round(forget, 4),
            "test_acc": round(test, 4), "tow": round(tow(retain, forget, test), 4),
            "train_fit_acc": round(prep.train_fit_acc, 4),
            "train_steps": prep.train_steps_taken,
            "l2_to_original": round(l2_distance(model, prep.original), 6)
            if comparable(model, prep.original) else None,
            "forget_size": len(prep.split.forget), "heldout_size": len(prep.split.heldout),
            "split": prep.split.hash}


def _attack_row(spec, prep: Prepared, probe: Probe | None, model, forget_before: float,
                cell: RelearnCell, audit: _Audit | None = None) -> dict:
    k = cell.k
    cfg = attack_config(spec, prep.profile, k, cell.attack_lr, cell.attack_steps)
    forget_classes = torch.unique(prep.y[prep.split.forget.to(prep.x.device)])
    data = RelearnData.build(cell.relearn_set, prep.x, prep.y, prep.x_test, prep.y_test,
                             prep.split.retain, prep.split.leaked(k),
                             prep.split.heldout.to(prep.x.device), forget_classes)
    t0 = time.perf_counter()
    attacked, curve = relearn(model, data, cfg, prep.recipe, seed=prep.seed)
    attack_s = time.perf_counter() - t0
    retain_after = evaluate(attacked, prep.x, prep.y, prep.split.retain.to(prep.x.device)).acc
    after = {} if probe is None else {f"{key}_attacked": v
                                      for key, v in mia(prep, probe, attacked).items()
                                      if _wanted(spec, key)}
    if audit is not None:
        def attack_split(m: nn.Module, i: int, s) -> nn.Module:
            split_data = RelearnData.build(cell.relearn_set, s_x, s_y, prep.x_test,
                                           prep.y_test, s.retain_ids(i),
                                           prep.split.leaked(k), s.forget_ids(i),
                                           forget_classes)
            return relearn(m, split_data, cfg, prep.recipe, seed=prep.seed)[0]

        s_x, s_y = audit.design.x, audit.design.y
        after |= audit.after(attacked, attack_split)
    return {
        "retain_acc_attacked": round(retain_after, 4),
        "test_acc_attacked": round(curve.test_acc[-1], 4),
        "forget_acc_attacked": round(curve.best, 4),
        "forget_acc_attacked_last": round(curve.last, 4),
        "forget_acc_attacked_end": round(curve.end, 4),
        "recovery": round(recovery(forget_before, curve.best), 4),
        "aurc": round(aurc(curve.steps, curve.forget_acc, forget_before), 4),
        **after,
        "attack": {"steps": cfg.steps, "lr": cfg.lr, "eval_every": cfg.eval_every},
        "curve_steps": curve.steps, "curve_forget_acc": [round(a, 3) for a in curve.forget_acc],
        "attack_seconds": round(attack_s, 3),
    }
