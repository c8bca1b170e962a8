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
- ``r``, the attack-attributable difference: (method end - method after unlearning) -
  (oracle end - oracle after unlearning), seed by seed. It is ``excess - forget_gap``: what
  the attack added beyond what the method never forgot. A method 14.9 points short of the
  oracle's forgetting that ends 10 above it has r = -4.9: its excess is leftover knowledge.
- ``share``: ``excess / (100 - oracle's end)``, the part of the forgotten knowledge that came
  back, so datasets with little headroom read correctly.
- ``recovery`` (a method's best attacked point minus its *own* forget accuracy after
  unlearning) is kept as a column but classifies nothing.

The thresholds come from the frozen ``protocol.yaml`` (``dormant.experiments.protocol``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

from dormant.experiments.protocol import PROTOCOL
from dormant.metrics import end_mean

VERDICTS = ("relearns", "resists", "inconclusive", "does-not-forget", "over-forgets")
RELEARN_EXCESS = PROTOCOL.relearn_excess
"""Points of ``excess`` from which a method relearns (``protocol.yaml``)."""
FORGET_MARGIN = PROTOCOL.forget_margin
"""Points between a method's forget accuracy after unlearning and the oracle's beyond which
an attack that brings back nothing beyond the gap says nothing about resistance."""
CONFIDENCE = PROTOCOL.confidence
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
    """Copies of the rows, the newest one per (method, cell), the ok ones paired with the
    oracle's row of the same cell: ``excess``, ``excess_max``, ``forget_gap`` (forget
    accuracy after unlearning minus the oracle's), ``r`` (``excess - forget_gap``),
    ``share`` (``excess / (100 - oracle's end)``), ``test_gap`` (test accuracy minus the
    oracle's) and ``distance_ratio`` (L2 to the original over the oracle's); ``None`` where
    the cell has no ok oracle row. Failed rows come back unchanged."""
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
            for key in PAIRED:
                r[key] = None
        if o is not None:
            _pair(r, o)
        out.append(r)
    return out


PAIRED = ("excess", "excess_max", "forget_gap", "r", "share", "test_gap", "distance_ratio",
          "oracle_end")


def _diff(a, b) -> float | None:
    return None if a is None or b is None else round(float(a) - float(b), 4)


def _pair(r: dict, o: dict) -> None:
    """``r``'s paired columns against its cell's oracle row ``o``, in place."""
    end, o_end = r["forget_acc_attacked_end"], attacked_end(o)
    r["oracle_end"] = o_end
    r["excess"] = _diff(end, o_end)
    r["excess_max"] = _diff(r.get("forget_acc_attacked"), o.get("forget_acc_attacked"))
    r["forget_gap"] = _diff(r.get("forget_acc"), o.get("forget_acc"))
    r["test_gap"] = _diff(r.get("test_acc"), o.get("test_acc"))
    if r["excess"] is not None and r["forget_gap"] is not None:
        r["r"] = round(r["excess"] - r["forget_gap"], 4)
    if r["excess"] is not None and o_end is not None and o_end < 100:
        r["share"] = round(r["excess"] / (100.0 - o_end), 4)
    d, o_d = r.get("l2_to_original"), o.get("l2_to_original")
    if d is not None and o_d:
        r["distance_ratio"] = round(d / o_d, 4)


def interval(values: list[float], confidence: float = CONFIDENCE) -> tuple[float, float]:
    """A two-sided t-interval for the mean of paired differences (one per seed); a single
    seed gives ``(nan, nan)``: one run cannot say how much the seed matters."""
    v = np.asarray(values, dtype=np.float64)
    if len(v) < 2:
        return math.nan, math.nan
    half = stats.t.ppf(0.5 + confidence / 2, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v))
    return float(v.mean() - half), float(v.mean() + half)


def classify(forget_gap: float, excess: float, excess_ci: tuple[float, float],
             r_ci: tuple[float, float]) -> str:
    """The verdict of one method in one cell, from means and intervals over seeds (one seed
    has no interval, so it never relearns nor resists):

    - ``relearns``: the excess reaches the bar and both its interval and r's lie above 0,
      whatever the gap after unlearning (a method that over-forgot and still ends above the
      oracle relearns);
    - ``does-not-forget``: the gap is above the margin and r's interval reaches 0: the attack
      adds nothing that shows beyond what was never forgotten;
    - ``over-forgets``: the gap is below the margin and the excess interval reaches 0: it
      ends no higher than the oracle;
    - ``resists``: an equivalence, the excess interval's upper end below the bar;
    - ``inconclusive``: anything else."""
    low, high = excess_ci
    r_low = r_ci[0]
    if excess >= RELEARN_EXCESS and low > 0 and r_low > 0:  # nan compares False
        return "relearns"
    if forget_gap > FORGET_MARGIN and not r_low > 0:
        return "does-not-forget"
    if forget_gap < -FORGET_MARGIN and not low > 0:
        return "over-forgets"
    if high < RELEARN_EXCESS:
        return "resists"
    return "inconclusive"


def why(v: Verdict) -> str:
    """The verdict's reason in a few words, for tables and reports."""
    bar = f"{RELEARN_EXCESS:g}"
    if v.method == "retrain":
        return "the oracle itself: 0 by definition"
    if v.verdict == "relearns":
        return f"excess ≥ {bar}, excess and r intervals above 0"
    if v.verdict == "does-not-forget":
        return f"gap {v.forget_gap:+.1f} > +{FORGET_MARGIN:g}, r interval reaches 0"
    if v.verdict == "over-forgets":
        return f"gap {v.forget_gap:+.1f} < −{FORGET_MARGIN:g}, excess interval reaches 0"
    if v.verdict == "resists":
        return f"excess interval below {bar}"
    if v.n < 2:
        return "one seed: no interval"
    if v.excess < RELEARN_EXCESS:
        return f"excess interval reaches {bar}"
    if not v.excess_low > 0:
        return "excess interval reaches 0"
    return "r interval reaches 0: what came back may be only what was never forgotten"


def point_relearns(row: dict) -> bool:
    """One seed's point verdict, counted beside the pooled one: the excess reaches the bar
    and the attack added something beyond the gap (r > 0)."""
    return (row.get("excess") is not None and row["excess"] >= RELEARN_EXCESS
            and row.get("r") is not None and row["r"] > 0)


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
    r: float
    r_low: float
    r_high: float
    share: float
    test_gap: float
    distance_ratio: float
    seeds_relearn: int
    """Seeds whose own point relearns (``point_relearns``)."""
    verdict: str

    def to_dict(self) -> dict:
        return asdict(self)


def _mean(group: list[dict], key: str) -> float:
    vals = [r[key] for r in group if r.get(key) is not None]
    return round(float(np.mean(vals)), 4) if vals else math.nan


def _share(group: list[dict]) -> float:
    """Mean excess over the mean oracle headroom (a ratio of means: one seed whose oracle
    ends near 100 would blow a mean of ratios up)."""
    pairs = [(r["excess"], r["oracle_end"]) for r in group
             if r.get("excess") is not None and r.get("oracle_end") is not None]
    if not pairs:
        return math.nan
    room = 100.0 - float(np.mean([o for _, o in pairs]))
    return round(float(np.mean([e for e, _ in pairs])) / room, 4) if room > 0 else math.nan


def verdicts(rows: list[dict]) -> list[Verdict]:
    """Every (method, cell) that has ok rows paired with the oracle, in the rows' order."""
    groups: dict[tuple, list[dict]] = {}
    for r in with_excess(rows):
        if r.get("status", "ok") == "ok" and r.get("excess") is not None:
            groups.setdefault(tuple(r.get(k) for k in GROUP), []).append(r)
    out = []
    for key, group in groups.items():
        ex = [r["excess"] for r in group]
        rs = [r["r"] for r in group]
        gap, mean = _mean(group, "forget_gap"), _mean(group, "excess")
        low, high = interval(ex)
        r_low, r_high = interval(rs)
        out.append(Verdict(
            *key, n=len(group), forget_gap=gap, excess=mean,
            excess_std=round(float(np.std(ex, ddof=1)), 4) if len(ex) > 1 else math.nan,
            excess_low=round(low, 4), excess_high=round(high, 4),
            excess_max=_mean(group, "excess_max"), r=_mean(group, "r"),
            r_low=round(r_low, 4), r_high=round(r_high, 4), share=_share(group),
            test_gap=_mean(group, "test_gap"), distance_ratio=_mean(group, "distance_ratio"),
            seeds_relearn=sum(point_relearns(r) for r in group),
            verdict=classify(gap, mean, (low, high), (r_low, r_high)),
        ))
    return out


def relearning_shown(found: list[Verdict], k: int = 0) -> bool:
    """The paper's effect at ``k``: at least two methods relearn where the oracle does not."""
    return sum(v.verdict == "relearns" for v in found if v.k == k) >= 2
