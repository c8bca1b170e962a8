"""``dormant plan``: what a relearning study will build and how long it will take on W
workers, before any of it runs.

The artefact graph is the one the cells build through the cache: an original per seed (per
forget set for canary sets, whose labels differ), an oracle per seed and forget set, one
calibration per forget set and pipeline (on the first seed), an unlearned model and its
analysis per seed, forget set and pipeline, then the attack of every cell.

The makespan is simulated with the executors' own rule: W workers take cells in the study's
order; a cell builds each missing upstream artefact itself, or waits for the worker already
building it (the per-key lock), then attacks. Durations come from one of:

- ``measured``: a short calibration run here: the seconds of one training step of the
  study's model at its batch size on this device, times each artefact's steps (an
  unlearning step is counted as one training step; methods with two batches or a teacher
  cost more);
- ``earlier run``: the medians of a finished run's build log and attack seconds (``--from``).
  The build log belongs to the cache, not the study: plan from a run whose cache served
  that study alone, or the medians mix in other studies' builds.
"""

from __future__ import annotations

import heapq
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from dormant.data import Dataset
from dormant.engine import resolve_device
from dormant.experiments.pipeline import Pipeline
from dormant.experiments.prepare import forget_sets
from dormant.experiments.profiles import profile_for
from dormant.experiments.relearn import attack_settings, base_hparams, relearn_cells
from dormant.experiments.spec import RelearnSpec
from dormant.models import ModelSpec, create_model
from dormant.store import ModelCache, read_rows
from dormant.unlearn import get_method, make_hparams


@dataclass
class Costs:
    """Seconds per artefact kind; ``source`` says where they were measured."""

    source: str
    step: float
    """One training step of the study's model."""
    original: float
    unlearn: dict[str, float]
    """Per method: one full unlearning run."""
    analysis: float
    attack: float
    inputs: dict = field(default_factory=dict)


@dataclass
class Plan:
    cells: int
    artefacts: dict[str, int]
    costs: Costs
    makespan: dict[int, float]
    """Simulated seconds to finish the study on W workers."""
    serial: float


def _steps(spec: RelearnSpec, profile, ds: Dataset, method: str, user: dict) -> int:
    """A method's unlearning steps as the study resolves them; a method without steps
    (Fisher, SSD, the weight-space edits) counts as one pass over the data."""
    hp = make_hparams(method, base_hparams(spec, profile, len(ds.y_train), method, user))
    batch = spec.recipe(profile.train).batch_size
    return int(getattr(hp, "steps", math.ceil(len(ds.y_train) / batch)))


def step_seconds(spec: RelearnSpec, ds: Dataset, steps: int = 10) -> float:
    """Seconds of one Adam step of the study's model at its recipe's batch size, on the
    study's device."""
    profile = profile_for(spec.dataset, len(ds.y_train), ds.image_shape)
    c, h, _ = ds.image_shape
    dev = resolve_device(spec.device)
    model = create_model(ModelSpec(spec.model or profile.model, c, ds.num_classes, h)).to(dev)
    opt = torch.optim.Adam(model.parameters(), 1e-4)
    batch = spec.recipe(profile.train).batch_size
    x = ds.x_train[:batch].to(dev).float() / 255
    y = ds.y_train[:batch].to(dev)
    times = []
    for i in range(2 * steps):
        t0 = time.perf_counter()
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        if i >= steps:  # the first steps warm up allocators, kernels and thread pools
            times.append(time.perf_counter() - t0)
    # the fastest step: other load on the machine only ever adds to it
    return min(times)


def measured_costs(spec: RelearnSpec, ds: Dataset, pipelines: list[Pipeline],
                   step: float | None = None) -> Costs:
    profile = profile_for(spec.dataset, len(ds.y_train), ds.image_shape)
    step = step or step_seconds(spec, ds)
    train = spec.recipe(profile.train).steps
    unlearn = {}
    for p in pipelines:
        for s in p.stages:
            if s.method not in unlearn and not p.is_reference:
                unlearn[s.method] = step * _steps(spec, profile, ds, s.method, s.hparams)
    n_eval = 3 * spec.analysis_size * spec.lmc_points if spec.analysis else 0
    # a forward pass costs about a third of a training step
    analysis = step / 3 * n_eval / spec.recipe(profile.train).batch_size
    attacks = attack_settings(spec, profile)
    attack_steps = statistics.mean(s for _, s in attacks)
    eval_every = spec.eval_every or profile.eval_every
    attack = step * attack_steps * (1 + 1 / (3 * eval_every))
    return Costs("measured", step, step * train, unlearn, analysis, attack,
                 {"step_seconds": round(step, 5), "train_steps_cap": train,
                  "attack_steps": attack_steps, "device": str(resolve_device(spec.device))})


def earlier_costs(spec: RelearnSpec, ds: Dataset, pipelines: list[Pipeline], run: Path,
                  cache_dir: Path) -> Costs:
    """Medians of a finished run: its cache's build log and its rows' attack seconds."""
    builds = ModelCache(cache_dir).build_log()
    rows = [r for r in read_rows(Path(run) / "results.jsonl") if r.get("status") == "ok"]
    if not builds or not rows:
        from dormant.errors import DormantError

        raise DormantError(f"--from {run}: no finished rows or no build log in {cache_dir}; "
                           "plan from a run that used this cache, or measure instead")

    def median(kind: str, method: str | None = None) -> float | None:
        xs = [b["seconds"] for b in builds if b["kind"] == kind
              and (method is None or b.get("method") == method)]
        return statistics.median(xs) if xs else None

    base = measured_costs(spec, ds, pipelines, step=1.0)  # step counts, in "steps"
    original = median("original") or 0.0
    step = original / base.original if original else 0.0
    unlearn = {m: median("unlearned", m) or step * v for m, v in base.unlearn.items()}
    return Costs("earlier run", step, original, unlearn, median("analysis") or 0.0,
                 statistics.median(r["attack_seconds"] for r in rows),
                 {"run": str(run), "builds": len(builds), "rows": len(rows)})


def plan(spec: RelearnSpec, ds: Dataset, costs: Costs, workers: list[int]) -> Plan:
    cells = relearn_cells(spec, ds)
    profile = profile_for(spec.dataset, len(ds.y_train), ds.image_shape)
    from dormant.experiments.pipeline import resolve

    pipes = {p.name: p for p in resolve(spec)}
    canary = any(f.startswith("canary") for f in forget_sets(spec, profile))
    first = spec.seeds[0]

    def stage_key(p: Pipeline, i: int) -> str:
        # a chain's first stage is the same artefact as the method alone with the same values
        return repr([(s.method, sorted(s.hparams.items())) for s in p.stages[:i + 1]])

    def needs(c) -> list[tuple[tuple, float]]:
        p = pipes[c.pipeline]
        orig = ("original", c.seed, c.forget if canary else "")
        deps = [(orig, costs.original), (("oracle", c.seed, c.forget), costs.original)]
        if not p.is_reference:
            calibrated = p.calibration(spec) == "oracle"
            if calibrated:
                orig0 = ("original", first, c.forget if canary else "")
                deps += [(orig0, costs.original), (("oracle", first, c.forget), costs.original)]
            for i, s in enumerate(p.stages):
                strength = get_method(s.method).strength
                cost = costs.unlearn.get(s.method, 0.0)
                if calibrated:  # every factor of the stage's strength, at full budget
                    deps.append((("calibration", c.forget, stage_key(p, i)),
                                 len(strength.factors) * cost if strength else 0.0))
                # on the first seed the calibration already built the chosen model
                own = 0.0 if calibrated and strength and c.seed == first else cost
                deps.append((("unlearned", c.seed, c.forget, stage_key(p, i)), own))
        return [*deps, (("analysis", c.seed, c.forget, p.name), costs.analysis)]

    kinds: dict[str, set] = {}
    for c in cells:
        for key, _ in needs(c):
            kinds.setdefault(key[0], set()).add(key)
    artefacts = {k: len(v) for k, v in kinds.items()}
    artefacts["attacks"] = len(cells)

    def simulate(w: int) -> float:
        free = [0.0] * w
        done: dict[tuple, float] = {}
        end = 0.0
        for c in cells:
            t = heapq.heappop(free)
            for key, cost in needs(c):
                if key in done:
                    t = max(t, done[key])  # built, or being built: wait on its lock
                else:
                    t += cost
                    done[key] = t
            t += costs.attack
            end = max(end, t)
            heapq.heappush(free, t)
        return end

    return Plan(len(cells), artefacts, costs, {w: simulate(w) for w in workers}, simulate(1))
