"""Result tables: a per-(method, k) summary over seeds, as a DataFrame, markdown and CSV."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from dormant.store.files import atomic_write_text

SUMMARY = {
    "retain_acc": "retain",
    "test_acc": "test",
    "forget_acc": "forget",
    "forget_acc_attacked": "forget after attack (max)",
    "forget_acc_attacked_last": "forget after attack (last)",
    "recovery": "recovery",
    "l2_to_original": "L2 to original",
}
REFERENCE_ORDER = {"original": 0, "retrain": 1}


def rows_frame(rows: list[dict]) -> pd.DataFrame:
    """One row per cell; list and dict columns become JSON strings so CSV keeps them."""
    df = pd.DataFrame(rows)
    for col in df.columns:
        if df[col].map(lambda v: isinstance(v, list | dict)).any():
            df[col] = df[col].map(json.dumps)
    return df


def summary_frame(rows: list[dict]) -> pd.DataFrame:
    """Mean over seeds per (method, k), references first; ``n`` is the number of seeds."""
    df = pd.DataFrame(rows)
    g = df.groupby(["method", "k"], sort=False)
    out = g[list(SUMMARY)].mean()
    out["n"] = g.size()
    out = out.reset_index()
    out["_order"] = out["method"].map(REFERENCE_ORDER).fillna(2)
    return out.sort_values(["k", "_order"], kind="stable").drop(columns="_order")


def to_markdown(df: pd.DataFrame) -> str:
    headers = ["method", "k", *SUMMARY.values(), "seeds"]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for r in df.itertuples(index=False):
        d = r._asdict()
        cells = [d["method"], str(d["k"])] + [f"{d[c]:.1f}" if c != "l2_to_original"
                                              else f"{d[c]:.3f}" for c in SUMMARY] + [str(d["n"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_csv(rows: list[dict], path: Path) -> None:
    atomic_write_text(path, rows_frame(rows).to_csv(index=False))


def relearning_verdict(rows: list[dict], margin: float = 20.0, oracle_tolerance: float = 10.0
                       ) -> dict:
    """Does the study show the paper's effect at k = 0? The oracle must move at most
    ``oracle_tolerance`` points, and methods recovering ``margin`` points more are dormant."""
    s = summary_frame([r for r in rows if r["k"] == 0])
    if s.empty or "retrain" not in set(s["method"]):
        return {"shown": False, "oracle_recovery": None, "dormant": []}
    oracle = float(s.loc[s["method"] == "retrain", "recovery"].iloc[0])
    dormant = [
        (r.method, float(r.recovery)) for r in s.itertuples()
        if r.method not in REFERENCE_ORDER and r.recovery >= oracle + margin
    ]
    return {"shown": abs(oracle) <= oracle_tolerance and len(dormant) >= 2,
            "oracle_recovery": oracle, "dormant": dormant}
