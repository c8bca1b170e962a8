"""Verdicts: does a method's forgotten knowledge come back, compared with the retrain oracle
attacked in the same cell?

The rules and thresholds live here and nowhere else; reports, the CLI, the demo and
``dormant forget`` only print what this module decides.

- ``excess`` is the headline: a method's attacked forget accuracy where the attack *ends*
  (``forget_acc_attacked_end``, the mean of the curve's last 12.8% of points, as the seed
  paper's ``get_wandb_relearn_grid.py`` averages its last 50 evaluations) minus the retrain
  oracle's, in the same cell: seed, forget set, k, relearn set, attack lr and steps. The
  oracle's own excess is 0 by definition.
- ``excess_max`` does the same with each curve's maximum, a secondary, noisier column.
- ``recovery`` (a method's best attacked point minus its *own* forget accuracy after
  unlearning) is kept as a column but classifies nothing: a method that over-forgets shows a
  large recovery while ending below the oracle (the MNIST study's ``tar``: 0 -> 63.8, with
  the attacked oracle at 75.9).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

from dormant.metrics import end_mean

VERDICTS = ("does-not-forget", "over-forgets", "relearns", "resists")
FORGET_MARGIN = 15.0
"""Points between a method's forget accuracy after unlearning and the oracle's beyond which
its attack says nothing about resistance: above, it never forgot; below, it over-forgot (a
finding too: the forget set is conspicuous)."""
RELEARN_EXCESS = 10.0
"""Points of ``excess`` from which a method relearns: a fifth of the seed paper's effect
(forget accuracy ~50% after unlearning, ~100% after retain-only fine-tuning)."""
CONFIDENCE = 0.95
CELL = ("seed", "forget", "k", "relearn_set", "attack_lr", "attack_steps")
"""What must match for two rows to be compared: the oracle's row for a method's row."""
GROUP = ("method", "forget", "k", "relearn_set", "attack_lr", "attack_steps")
"""A verdict's cell: everything but the seed, over which it takes mean and interval."""


def attacked_end(row: dict) -> float | None:
    """``forget_acc_attacked_end`` of a row, recomputed from its curve for older rows."""
    if row.get("forget_acc_attacked_end") is not None:
        return float(row["forget_acc_attacked_end"])
    curve = row.get("curve_forget_acc")
    return end_mean(curve) if curve else None


def _cell(row: dict) -> tuple:
    return tuple(row.get(k) for k in CELL)


def with_excess(rows: list[dict]) -> list[dict]:
    """Copies of the rows, the newest one per (method, cell), the ok ones with ``excess``,
    ``excess_max`` and ``forget_gap`` (forget accuracy after unlearning minus the oracle's)
    against the oracle's row of the same cell; ``None`` where that cell has no ok oracle row.
    Failed rows come back unchanged."""
    # a study rerun into the same folder with other settings appends rows for cells it
    # already had: the newest row of a (method, cell) is the one that counts, so a seed is
    # never counted twice and two settings never share one verdict
    newest = {(r.get("method"), _cell(r)): i for i, r in enumerate(rows)}
    rows = [r for i, r in enumerate(rows) if newest[r.get("method"), _cell(r)] == i]
    ok = [r for r in rows if r.get("status", "ok") == "ok"]
    oracle = {_cell(r): r for r in ok if r.get("method") == "retrain"}
    out = []
    for r in rows:
        r = dict(r)
        o = oracle.get(_cell(r)) if r.get("status", "ok") == "ok" else None
        if r.get("status", "ok") == "ok":
            r["forget_acc_attacked_end"] = attacked_end(r)
            r["excess"] = r["excess_max"] = r["forget_gap"] = None
        if o is not None:
            end, o_end = r["forget_acc_attacked_end"], attacked_end(o)
            if end is not None and o_end is not None:
                r["excess"] = round(end - o_end, 4)
            r["excess_max"] = round(r["forget_acc_attacked"] - o["forget_acc_attacked"], 4)
            r["forget_gap"] = round(r["forget_acc"] - o["forget_acc"], 4)
        out.append(r)
    return out


def interval(values: list[float], confidence: float = CONFIDENCE) -> tuple[float, float]:
    """A two-sided t-interval for the mean of paired differences (one per seed); a single
    seed gives ``(nan, nan)``: one run cannot say how much the seed matters."""
    v = np.asarray(values, dtype=np.float64)
    if len(v) < 2:
        return math.nan, math.nan
    half = stats.t.ppf(0.5 + confidence / 2, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v))
    return float(v.mean() - half), float(v.mean() + half)


def classify(forget_gap: float, excess: float, excess_low: float, n: int) -> str:
    """The verdict of one method in one cell, from means over ``n`` seeds."""
    if forget_gap > FORGET_MARGIN:
        return "does-not-forget"
    if forget_gap < -FORGET_MARGIN:
        return "over-forgets"
    if excess >= RELEARN_EXCESS and (n < 2 or excess_low > 0):
        return "relearns"
    return "resists"


@dataclass(frozen=True)
class Verdict:
    """One method in one cell, over seeds: paired against the oracle seed by seed."""

    method: str
    forget: str | None
    k: int
    relearn_set: str
    attack_lr: float
    attack_steps: int
    n: int
    forget_gap: float
    excess: float
    excess_std: float
    excess_low: float
    excess_high: float
    excess_max: float
    verdict: str

    def to_dict(self) -> dict:
        return asdict(self)


def verdicts(rows: list[dict]) -> list[Verdict]:
    """Every (method, cell) that has ok rows paired with the oracle, in the rows' order."""
    groups: dict[tuple, list[dict]] = {}
    for r in with_excess(rows):
        if r.get("status", "ok") == "ok" and r.get("excess") is not None:
            groups.setdefault(tuple(r.get(k) for k in GROUP), []).append(r)
    out = []
    for key, group in groups.items():
        ex = [r["excess"] for r in group]
        gap = float(np.mean([r["forget_gap"] for r in group]))
        low, high = interval(ex)
        mean = float(np.mean(ex))
        out.append(Verdict(
            *key, n=len(group), forget_gap=round(gap, 4), excess=round(mean, 4),
            excess_std=round(float(np.std(ex, ddof=1)), 4) if len(ex) > 1 else math.nan,
            excess_low=round(low, 4), excess_high=round(high, 4),
            excess_max=round(float(np.mean([r["excess_max"] for r in group])), 4),
            verdict=classify(gap, mean, low, len(group)),
        ))
    return out


def relearning_shown(found: list[Verdict], k: int = 0) -> bool:
    """The paper's effect at ``k``: at least two methods relearn where the oracle does not."""
    return sum(v.verdict == "relearns" for v in found if v.k == k) >= 2
