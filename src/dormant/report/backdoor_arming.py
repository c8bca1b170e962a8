"""Was the planted backdoor armed, and what woke it: the ceilings, the purity budget, the
exact deletions' positive control (``carriers-first``), the approximate methods' paired
amplification with its interval, and the one-line headline of a backdoor run.

A "not woken" means something only when the poisons could have given a working backdoor:
per seed, the *poisons only* ceiling is the victim trained without the attacker's carriers
(its counterweights or camouflage), and *no carrier at all* without any carrier, the
victim's own included. A run whose ceiling stays below the study's ``armed_asr`` is
*unarmed*, whatever its deletions did.
"""

from __future__ import annotations

import math

import pandas as pd

from dormant.experiments.backdoor_spec import ARM_LABELS, EXACT_METHODS
from dormant.experiments.verdicts import interval
from dormant.report.tables import Table, fmt, ok_rows

ARMED_ASR = 80.0
"""What a seed's ceiling must reach when its rows do not say (rows of runs before 2026-12)."""
HEADLINES = ("woken", "activated, cause not shown", "no request applied", "unarmed",
             "not held down", "not woken, armed")


def arm_label(rows: list[dict]) -> str:
    """The run's arm in words (``camouflage, not clean`` or ``clean natural carriers``)."""
    arms = {r.get("arm") or "natural" for r in ok_rows(rows)}
    return " and ".join(ARM_LABELS.get(a, a) for a in sorted(arms)) or ARM_LABELS["natural"]


def ceilings(rows: list[dict]) -> pd.DataFrame:
    """One line per seed: the dormant ASR (the poisoned model before any deletion), both
    ceilings, whether the seed is armed, and its purity budget."""
    cols = ["seed", "asr_dormant", "asr_ceiling", "asr_ceiling_no_carriers", "armed",
            "poisons", "counterweights", "camouflage", "victim_carriers", "purity_before",
            "purity_after"]
    lines = []
    by_seed: dict[int, list[dict]] = {}
    for r in ok_rows(rows):
        if r.get("condition") not in ("badnets", "blended", "unpoisoned", "dose"):
            by_seed.setdefault(r["seed"], []).append(r)
    for seed in sorted(by_seed):
        first = by_seed[seed][0]
        line = {c: first.get(c) for c in cols}
        line["seed"] = seed
        line["asr_dormant"] = first.get("asr_before")
        if line["armed"] is None and line["asr_ceiling"] is not None:
            line["armed"] = line["asr_ceiling"] >= ARMED_ASR
        lines.append(line)
    return pd.DataFrame(lines, columns=cols)


def ceilings_display(df: pd.DataFrame) -> Table:
    rows = [[str(r["seed"]), fmt(r["asr_dormant"]), fmt(r["asr_ceiling"]),
             fmt(r["asr_ceiling_no_carriers"]),
             "-" if r["armed"] is None or pd.isna(r["armed"]) else
             "yes" if r["armed"] else "no",
             fmt(r["poisons"]), fmt(r["counterweights"]), fmt(r["camouflage"]),
             fmt(r["victim_carriers"]), _purity(r["purity_before"]),
             _purity(r["purity_after"])]
            for r in df.to_dict("records")]
    return Table(["seed", "ASR dormant", "ceiling: poisons only", "ceiling: no carrier at all",
                  "armed", "poisons", "counterweights", "camouflage", "victim's own carriers",
                  "purity before", "purity after deleting the attacker's carriers"], rows)


def _purity(v) -> str:
    return "-" if v is None or pd.isna(v) else f"{v:.3f}"


def armed(rows: list[dict]) -> tuple[int, int]:
    """(armed seeds, seeds with a measured ceiling)."""
    df = ceilings(rows)
    known = df["armed"].dropna()
    return int(known.astype(bool).sum()), len(known)


def held_down(rows: list[dict], rise: float) -> tuple[int, int]:
    """(seeds whose dormant ASR lies at least ``rise`` points under the poisons-only
    ceiling, seeds with both): only there can a deletion show a rise of ``rise``."""
    df = ceilings(rows).dropna(subset=["asr_dormant", "asr_ceiling"])
    return int((df["asr_dormant"] <= df["asr_ceiling"] - rise).sum()), len(df)


def exact_control(rows: list[dict]) -> pd.DataFrame:
    """Per exact method (retrain, SISA): its ``carriers-first`` request against the ceiling
    and the dormant ASR, paired per seed: the mean ASR after, how many carriers the requests
    held of those the attacker contributed, and the shortfall from the ceiling."""
    df = pd.DataFrame(ok_rows(rows))
    cols = ["method", "n", "asr_dormant", "asr_after", "asr_ceiling", "below_ceiling",
            "carriers", "attacker_carriers"]
    if df.empty or "condition" not in df:
        return pd.DataFrame(columns=cols)
    lines = []
    for m in EXACT_METHODS:
        part = df[(df["method"] == m) & (df["condition"] == "carriers-first")]
        if not len(part) or "asr_ceiling" not in part:
            continue
        lines.append({"method": m, "n": int(part["seed"].nunique()),
                      "asr_dormant": (part["asr_before_own"].fillna(part["asr_before"])
                                      if "asr_before_own" in part
                                      else part["asr_before"]).mean(),
                      "asr_after": part["asr_after"].mean(),
                      "asr_ceiling": part["asr_ceiling"].mean(),
                      "below_ceiling": (part["asr_ceiling"] - part["asr_after"]).mean(),
                      "carriers": part["carriers"].mean(),
                      "attacker_carriers": part.get("attacker_carriers",
                                                    pd.Series(dtype=float)).mean()})
    return pd.DataFrame(lines, columns=cols)


def exact_display(df: pd.DataFrame) -> Table:
    rows = [[r["method"], str(r["n"]), fmt(r["asr_dormant"]), fmt(r["asr_after"]),
             fmt(r["asr_ceiling"]), fmt(r["below_ceiling"]),
             f"{fmt(r['carriers'])} of {fmt(r['attacker_carriers'])}"]
            for r in df.to_dict("records")]
    return Table(["exact method", "seeds", "ASR dormant", "ASR after carriers-first",
                  "ceiling: poisons only", "below the ceiling", "carriers in the request"],
                 rows)


def amplification(rows: list[dict]) -> pd.DataFrame:
    """Per method: ASR after the attack's request minus ASR after ``random-equal`` (the same
    steps on a random request of the same size from the same clean pool), paired per seed,
    with its 95% t-interval (none for one seed). ``amplifies`` when the interval lies above
    0, ``no`` when it lies below or reaches 0."""
    df = pd.DataFrame(ok_rows(rows))
    cols = ["method", "n", "diff", "low", "high", "amplifies"]
    if df.empty or "condition" not in df:
        return pd.DataFrame(columns=cols)
    lines = []
    for m in dict.fromkeys(df["method"]):
        per = {c: df[(df["method"] == m) & (df["condition"] == c)].groupby("seed")[
            "asr_after"].mean() for c in ("attack", "random-equal")}
        seeds = per["attack"].index.intersection(per["random-equal"].index)
        if not len(seeds):
            continue
        d = (per["attack"].loc[seeds] - per["random-equal"].loc[seeds]).tolist()
        lo, hi = interval(d)
        lines.append({"method": m, "n": len(d), "diff": sum(d) / len(d), "low": lo,
                      "high": hi, "amplifies": None if math.isnan(lo) else bool(lo > 0)})
    return pd.DataFrame(lines, columns=cols)


def amplification_display(df: pd.DataFrame) -> Table:
    rows = [[r["method"], str(r["n"]), fmt(r["diff"]),
             "-" if pd.isna(r["low"]) else f"[{fmt(r['low'])}, {fmt(r['high'])}]",
             "-" if r["amplifies"] is None else "yes" if r["amplifies"] else "no"]
            for r in df.to_dict("records")]
    return Table(["method", "paired seeds", "attack − random-equal (ASR points)",
                  "95% interval", "above 0"], rows)


def headline(rows: list[dict], woken: list[str], activated: list[str], rise: float
             ) -> tuple[str, str]:
    """(one of :data:`HEADLINES`; the sentence that says it). ``activated``: the methods
    whose ASR crossed the activation bars, ``woken`` those of them whose controls (the
    random request, the unpoisoned twin) also show the request as the cause; ``rise``: the
    activation's rise bar, which a dormant ASR needs room under the ceiling for."""
    label = arm_label(rows)
    k, n = armed(rows)
    if woken:
        return "woken", (f"Woken ({label}): the request woke the backdoor under "
                         f"{', '.join(woken)}; {k} of {n} seeds armed.")
    if activated:
        return "activated, cause not shown", (
            f"Activated, cause not shown ({label}): the ASR crossed the activation bars "
            f"under {', '.join(activated)}, but a control that would show the request as "
            "the cause (random-equal or the unpoisoned twin) is missing or rose too.")
    applied = {r["seed"] for r in ok_rows(rows) if r.get("condition") == "attack"}
    if not applied:
        return "no request applied", (f"No request applied ({label}): no attack cell "
                                      "succeeded, so there is nothing to call woken or not.")
    if not n or k < n:
        why = ("no ceiling was measured (rows from before ceilings existed)" if not n else
               f"only {k} of {n} seeds' poisons-only ceilings reached the armed level")
        return "unarmed", (f"Unarmed ({label}): {why}, so a deletion that wakes nothing "
                           "says nothing about the methods.")
    h, m = held_down(rows, rise)
    if h < m:
        return "not held down", (
            f"Not held down ({label}): armed, but on {m - h} of {m} seeds the dormant ASR "
            f"already lay within {rise:g} points of the poisons-only ceiling, so no deletion "
            "could show the rise that activation needs.")
    return "not woken, armed", (
        f"Not woken, armed ({label}): every seed's poisons-only ceiling reached its armed "
        f"level with the dormant ASR at least {rise:g} points under it, the requests were "
        "applied on " + f"{len(applied)} seeds, and no method's ASR rose beyond the bars "
        "above a random request of the same size.")
