"""``calibrate: oracle``: every method at a strength that forgets as much as the oracle.

A fixed learning rate is not a like-for-like budget: one method forgets nothing at it and
another wipes the forget set out, and neither says anything about resistance. So before the
study, each method's declared strength hyper-parameter (``Strength``, next to its defaults)
is chosen from a grid of at most 4 values, each run for the method's *full* budget:

- ``target="leakable"``: the value whose accuracy on the **leakable** forget ids is closest
  to the oracle's, among the values that keep retain accuracy within ``UTILITY_MARGIN``
  points of the oracle's;
- ``target="distance"``: the smallest value whose L2 distance from theta_pre reaches the
  oracle's (the remedies, whose job is to move the weights).

A grid that does not bracket its target (every usable candidate too weak, or every one too
strong) grows by the grid's own step beyond its end, one full-budget run at a time, up to the
protocol's ``max_extensions``; it does not grow stronger past a value that broke the model
(diverged, or retain accuracy below the floor). A grid that still does not bracket keeps its
closest value and says so (``bracketed: false``), in the row and in the report.

Only the first seed of each forget set is calibrated, and only on the leakable ids (the
first 20% of the permuted forget set, which the attacker may see anyway). The held-out
split, on which every reported forget accuracy is measured, is never read here. Candidates go
through the model cache, so the chosen one is not trained again for that seed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

from torch import nn

from dormant.engine import Diverged, evaluate
from dormant.errors import DormantError
from dormant.experiments.pipeline import Pipeline
from dormant.experiments.prepare import Prepared
from dormant.experiments.protocol import PROTOCOL
from dormant.metrics import l2_distance
from dormant.unlearn import Strength, get_method, make_hparams


@dataclass(frozen=True)
class Calibration:
    """The choice for one stage of a pipeline, with every candidate's score."""

    stage: int
    method: str
    param: str
    target: str
    goal: float
    """The oracle's accuracy on the leakable ids, or its L2 distance from theta_pre."""
    values: tuple[float, ...]
    scores: tuple[float, ...]
    retain: tuple[float, ...]
    """Each candidate's retain accuracy: those more than ``UTILITY_MARGIN`` points below the
    oracle's are out of the running (unless every one is)."""
    chosen: float
    bracketed: bool = True
    """Some candidate lay on each side of the goal (or on it)."""
    extended: int = 0
    """Values tried beyond the grid's end to bracket the goal."""

    def to_dict(self) -> dict:
        return asdict(self)


def calibration_line(c: dict) -> str:
    """One calibration (``Calibration.to_dict()``) in words, every number labelled:
    ``calibrated finetune: lr 0.081, leakable forget acc 33.3% (oracle 44.4%); also tried lr
    0.0001: 66.7%, 0.0003: 77.8%``."""
    leakable = c["target"] == "leakable"
    what, unit = ("leakable forget acc", "%") if leakable else ("L2 from θ_pre", "")

    def reached(s: float) -> str:
        return "diverged" if not math.isfinite(s) else f"{s:.1f}{unit}" if leakable \
            else f"{s:.3g}"

    pairs = list(zip(c["values"], c["scores"], strict=True))
    chosen = next((s for v, s in pairs if v == c["chosen"]), math.nan)
    others = ", ".join(f"{v:.3g}: {reached(s)}" for v, s in pairs if v != c["chosen"])
    goal = f"{c['goal']:.1f}{unit}" if leakable else f"{c['goal']:.3g}"
    line = (f"calibrated {c['method']}: {c['param']} {c['chosen']:.3g}, {what} {reached(chosen)} "
            f"(oracle {goal})")
    if others:
        line += f"; also tried {c['param']} {others}"
    if not c.get("bracketed", True):
        line += "; no candidate lay beyond the oracle, the closest runs"
    return line


UTILITY_MARGIN = PROTOCOL.utility_margin
"""Points of retain accuracy below the oracle's at which a candidate no longer counts: a
model that sends every image to one class scores 100% on a one-class forget set, and Fisher
forgetting's noise did exactly that on the MNIST study (retain accuracy 6%), so "closest to
the oracle on the leakable ids" alone picked a broken model."""


def _pick(strength: Strength, goal: float, values: list[float], scores: list[float],
          usable: list[bool], base: float) -> float:
    ok = [(v, s) for v, s, u in zip(values, scores, usable, strict=True) if u]
    if not ok:  # every candidate diverged: the base value runs, and fails as a row
        return base
    values, scores = [v for v, _ in ok], [s for _, s in ok]
    if strength.target == "distance":
        reached = [v for v, s in sorted(zip(values, scores, strict=True)) if s >= goal]
        return reached[0] if reached else max(values)
    # ties go to the weaker value, the least damage for the same forgetting; distances are
    # compared at 0.01 points so that two candidates one leakable image either side of the
    # oracle tie instead of being split by float rounding
    sign = 1 if strength.weaker == "lower" else -1
    best = min(zip(values, scores, strict=True),
               key=lambda vs: (round(abs(vs[1] - goal), 2), sign * vs[0]))
    return best[0]


TrainStages = Callable[[Pipeline, list[dict]], nn.Module]
"""``train(pipeline, stage_hps) -> model``: the study's cached way to run a pipeline."""


def _side(strength: Strength, score: float, retain: float, goal: float,
          floor: float) -> int | None:
    """+1: too weak, -1: too strong, 0: on the goal; None: broken (diverged, or below the
    retain floor), which says nothing about where the goal lies."""
    if not math.isfinite(score) or retain < floor:
        return None
    if strength.target == "distance":
        return 1 if score < goal else -1
    if round(abs(score - goal), 2) == 0:
        return 0
    return 1 if score > goal else -1


def _bracketed(strength: Strength, sides: list[int | None]) -> bool:
    """Usable candidates lie on both sides of the goal (or one on it); for the distance
    target, the smallest value that reaches needs a smaller one that does not."""
    if strength.target != "distance" and 0 in sides:
        return True
    return 1 in sides and -1 in sides


def _next_direction(sides: list[int | None]) -> bool | None:
    """Which way an unbracketed grid grows: True stronger, False weaker, None not at all
    (every usable value is too weak and a stronger one already broke the model)."""
    usable = [s for s in sides if s is not None]
    if usable and all(s == 1 for s in usable):
        return None if None in sides else True
    return False


def _beyond(strength: Strength, values: list[float], stronger: bool) -> float:
    """The next value one grid step past the end of ``values`` in the stronger or weaker
    direction, the step being the ratio of the grid's two outermost factors at that end."""
    f = sorted(strength.factors)
    up = stronger == (strength.weaker == "lower")
    ratio = (f[-1] / f[-2] if up else f[0] / f[1]) if len(f) > 1 else (2.0 if up else 0.5)
    return float(f"{(max(values) if up else min(values)) * ratio:.6g}")


def _score(prep: Prepared, strength: Strength, leakable, retain, train: TrainStages,
           pipe: Pipeline, hps: list[dict]) -> tuple[float, float]:
    """(accuracy on the leakable ids or L2 from theta_pre, retain accuracy) of one candidate;
    NaNs for one that diverged (too strong a value; the others still compete)."""
    try:
        model = train(pipe, hps)
    except Diverged:
        return math.nan, math.nan
    x, y = prep.x, prep.y
    score = (evaluate(model, x, y, leakable).acc if strength.target == "leakable"
             else l2_distance(model, prep.original))
    return score, evaluate(model, x, y, retain).acc


def calibrate(prep: Prepared, pipe: Pipeline, stage_hps: list[dict], user: list[dict],
              train: TrainStages) -> list[Calibration]:
    """Each stage's chosen strength, stage by stage (a chain's later stage is calibrated on
    top of its calibrated first stage). A stage whose strength the user set (``user[i]``
    names it) or whose method declares none gets no entry and keeps its value."""
    hps = [dict(h) for h in stage_hps]
    found: list[Calibration] = []
    x, y = prep.x, prep.y
    leakable = prep.split.leakable.to(x.device)
    retain = prep.split.retain.to(x.device)
    floor = evaluate(prep.oracle, x, y, retain).acc - UTILITY_MARGIN
    for i, stage in enumerate(pipe.stages):
        strength = get_method(stage.method).strength
        if strength is None or strength.param in user[i] or (
                strength.target == "leakable" and len(leakable) == 0):
            continue  # no knob, the user's own value, or nothing to match on
        goal = (prep.oracle_monitor_acc if strength.target == "leakable"
                else l2_distance(prep.oracle, prep.original))
        base = getattr(make_hparams(stage.method, hps[i]), strength.param)
        stage_pipe = Pipeline(pipe.name, pipe.stages[:i + 1])

        def with_value(v: float, i: int = i, param: str = strength.param) -> list[dict]:
            return [*hps[:i], {**hps[i], param: v}]

        # 6 significant digits: 3e-4, not 0.00030000000000000003, in rows and cache keys
        values = [float(f"{base * f:.6g}") for f in strength.factors]
        tried = [_score(prep, strength, leakable, retain, train, stage_pipe, with_value(v))
                 for v in values]
        extended = 0
        while extended < PROTOCOL.max_extensions:
            sides = [_side(strength, s, r, goal, floor) for s, r in tried]
            stronger = _next_direction(sides)
            if _bracketed(strength, sides) or stronger is None:
                break
            v = _beyond(strength, values, stronger=stronger)
            try:
                make_hparams(stage.method, with_value(v)[i])
            except (DormantError, ValueError):
                break  # the knob's own range ends here
            values.append(v)
            tried.append(_score(prep, strength, leakable, retain, train, stage_pipe,
                                with_value(v)))
            extended += 1
        scores, kept = [s for s, _ in tried], [r for _, r in tried]
        sides = [_side(strength, s, r, goal, floor) for s, r in tried]
        finite = [math.isfinite(s) for s in scores]
        usable = [f and r >= floor for f, r in zip(finite, kept, strict=True)]
        chosen = _pick(strength, goal, values, scores,
                       usable if any(usable) else finite, base)
        hps[i][strength.param] = chosen
        found.append(Calibration(i, stage.method, strength.param, strength.target,
                                 round(goal, 4), tuple(values),
                                 tuple(round(s, 4) for s in scores),
                                 tuple(round(r, 4) for r in kept), chosen,
                                 bracketed=_bracketed(strength, sides), extended=extended))
    return found
