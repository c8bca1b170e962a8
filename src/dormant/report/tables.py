"""Result tables from results rows: the per-setting summary, the paper's one-line-per-method
table, failed cells, as DataFrames, markdown and CSV.

Rows from older runs lack the newer keys; :func:`normalize_row` fills them (status "ok",
relearn set "retain", attack lr/steps from ``row["attack"]``) so every table reads both.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from dormant.experiments.verdicts import Verdict, attacked_end, verdicts, why, with_excess
from dormant.store.files import atomic_write_text

SUMMARY = {
    "retain_acc": "retain",
    "test_acc": "test",
    "forget_acc": "forget",
    "forget_acc_attacked_end": "forget after attack (end)",
    "excess": "excess",
    "forget_acc_attacked": "forget after attack (max)",
    "excess_max": "excess (max)",
    "forget_acc_attacked_last": "forget after attack (last)",
    "recovery": "recovery (own start)",
    "l2_to_original": "L2 to original",
}
# newer metrics; old rows give NaN, and the markdown leaves out columns that are all NaN
EXTRA = {
    "tow": "ToW",
    "retain_acc_attacked": "retain after attack",
    "test_acc_attacked": "test after attack",
    "aurc": "AURC",
    "l2_to_oracle": "L2 to oracle",
    "barrier": "retain-loss barrier",
    "mia_auc": "MIA AUC (SVC)",
    "mia_auc_attacked": "MIA AUC (SVC) after attack",
    "mia_loss_auc": "MIA AUC (loss)",
    "mia_loss_auc_attacked": "MIA AUC (loss) after attack",
    "lira_auc": "LiRA AUC",
    "lira_auc_attacked": "LiRA AUC after attack",
    "rmia_auc": "RMIA AUC",
    "rmia_auc_attacked": "RMIA AUC after attack",
    "ulira_auc": "U-LiRA AUC",
    "ulira_auc_attacked": "U-LiRA AUC after attack",
}
GROUP = ["method", "relearn_set", "attack_lr", "attack_steps", "k"]
REFERENCE_ORDER = {"original": 0, "retrain": 1}
RELEARN_SET_ORDER = {"retain": 0, "forget-only": 1, "test": 2, "test+retain-class": 3}
# paper column -> (row key, k it is read at or None for the unlearned model itself, label);
# the study's own k values decide the attack columns (``paper_columns``): these are the
# seed paper's k = 0 and 5
PAPER = {
    "forget": ("forget_acc", None, "forget"),
    "forget_k0": ("forget_acc_attacked_end", 0, "forget after attack k=0 (end)"),
    "excess_k0": ("excess", 0, "excess k=0"),
    "forget_k5": ("forget_acc_attacked_end", 5, "forget after attack k=5 (end)"),
    "excess_k5": ("excess", 5, "excess k=5"),
    "test": ("test_acc", None, "test"),
    "tow": ("tow", None, "ToW"),
    "l2_to_original": ("l2_to_original", None, "L2 to original"),
    "l2_to_oracle": ("l2_to_oracle", None, "L2 to oracle"),
    "barrier": ("barrier", None, "retain-loss barrier"),
    "mia_auc": ("mia_auc", None, "MIA AUC"),
    "mia_auc_attacked": ("mia_auc_attacked", 0, "MIA AUC after attack k=0"),
    "aurc_k0": ("aurc", 0, "AURC k=0"),
}
FAILED = ["method", "seed", "k", "relearn_set", "error"]
_SIGNED = {"signed", "excess", "excess_max", "recovery", "forget_gap"}
_DECIMALS = {"l2_to_original": 3, "l2_to_oracle": 3, "barrier": 3, "mia_auc": 3,
             "mia_auc_attacked": 3, "mia_loss_auc": 3, "mia_loss_auc_attacked": 3,
             **{f"{a}_auc{s}": 3 for a in ("lira", "rmia", "ulira") for s in ("", "_attacked")}}


@dataclass(frozen=True)
class Table:
    """A table already formatted for display: header labels and rows of strings."""

    headers: list[str]
    rows: list[list[str]]


def normalize_row(row: dict) -> dict:
    """A copy with the keys newer runs write, filled in for rows of older runs."""
    r = dict(row)
    r.setdefault("status", "ok")
    r.setdefault("relearn_set", "retain")
    attack = r.get("attack") or {}
    if r.get("attack_lr") is None:
        r["attack_lr"] = attack.get("lr")
    if r.get("attack_steps") is None:
        r["attack_steps"] = attack.get("steps")
    if r["status"] == "ok" and r.get("forget_acc_attacked_end") is None:
        r["forget_acc_attacked_end"] = attacked_end(r)
    return r


def paired(rows: list[dict]) -> list[dict]:
    """Normalised rows with ``excess`` against the oracle of the same cell (ok rows)."""
    return with_excess([normalize_row(r) for r in rows])


def ok_rows(rows: list[dict]) -> list[dict]:
    return [r for r in map(normalize_row, rows) if r["status"] == "ok"]


def failed_rows(rows: list[dict]) -> list[dict]:
    return [r for r in map(normalize_row, rows) if r["status"] != "ok"]


def main_setting(rows: list[dict], relearn_set: str = "retain") -> tuple | None:
    """The (attack_lr, attack_steps) most rows of ``relearn_set`` use: the study's main
    attack; ok rows decide, failed ones only when nothing succeeded."""
    for pool in (ok_rows(rows), failed_rows(rows)):
        counts = Counter((r["attack_lr"], r["attack_steps"]) for r in pool
                         if r["relearn_set"] == relearn_set)
        if counts:
            return counts.most_common(1)[0][0]
    return None


def main_rows(rows: list[dict], relearn_set: str = "retain", status: str = "ok") -> list[dict]:
    """Rows of ``relearn_set`` at its main attack setting, with the given status."""
    setting = main_setting(rows, relearn_set)
    pool = ok_rows(rows) if status == "ok" else failed_rows(rows)
    return [r for r in pool if r["relearn_set"] == relearn_set
            and (r["attack_lr"], r["attack_steps"]) == setting]


def relearn_sets(rows: list[dict]) -> list[str]:
    found = {normalize_row(r)["relearn_set"] for r in rows}
    return sorted(found, key=lambda s: (RELEARN_SET_ORDER.get(s, 9), s))


def method_order(rows: list[dict]) -> list[str]:
    """References first, then methods in the order the study ran them."""
    seen = list(dict.fromkeys(r["method"] for r in rows))
    return sorted(seen, key=lambda m: REFERENCE_ORDER.get(m, 2))


def _numeric(df: pd.DataFrame, cols) -> pd.DataFrame:
    for c in cols:
        df[c] = pd.to_numeric(df[c], errors="coerce") if c in df else math.nan
    return df


def rows_frame(rows: list[dict]) -> pd.DataFrame:
    """One row per cell; list and dict columns become JSON strings so CSV keeps them."""
    df = pd.DataFrame(rows)
    for col in df.columns:
        if df[col].map(lambda v: isinstance(v, list | dict)).any():
            df[col] = df[col].map(lambda v: json.dumps(v) if isinstance(v, list | dict) else v)
    return df


def summary_frame(rows: list[dict]) -> pd.DataFrame:
    """Mean over seeds of the ok rows per (method, relearn set, attack lr, attack steps, k),
    references first; ``n`` is the number of rows (seeds) averaged."""
    cols = [*SUMMARY, *EXTRA]
    ok = ok_rows(paired(rows))
    if not ok:
        return pd.DataFrame(columns=[*GROUP, *cols, "n"])
    df = _numeric(pd.DataFrame(ok), cols)
    g = df.groupby(GROUP, sort=False, dropna=False)
    out = g[cols].mean()
    out["n"] = g.size()
    out = out.reset_index()
    keys = pd.DataFrame({
        "_set": out["relearn_set"].map(RELEARN_SET_ORDER).fillna(9),
        "_method": out["method"].map(REFERENCE_ORDER).fillna(2),
    })
    out = pd.concat([out, keys], axis=1)
    return (out.sort_values(["_set", "relearn_set", "attack_lr", "attack_steps", "k", "_method"],
                            kind="stable")
            .drop(columns=["_set", "_method"]).reset_index(drop=True))


def paper_columns(ks) -> dict:
    """:data:`PAPER` with one ``forget_kK``/``excess_kK`` pair per study k (sorted; none
    given: the paper's 0 and 5), and the attacked MIA and AURC at the smallest k."""
    ks = sorted({int(k) for k in ks}) or [0, 5]
    first = ks[0]
    cols: dict = {}
    for col, spec in PAPER.items():
        if col in ("forget_k5", "excess_k5"):
            continue
        if col == "forget_k0":
            for k in ks:
                cols[f"forget_k{k}"] = ("forget_acc_attacked_end", k,
                                        f"forget after attack k={k} (end)")
                cols[f"excess_k{k}"] = ("excess", k, f"excess k={k}")
        elif col == "excess_k0":
            continue
        elif col == "mia_auc_attacked":
            cols[col] = ("mia_auc_attacked", first, f"MIA AUC after attack k={first}")
        elif col == "aurc_k0":
            cols[f"aurc_k{first}"] = ("aurc", first, f"AURC k={first}")
        else:
            cols[col] = spec
    return cols


def paper_table(rows: list[dict]) -> pd.DataFrame:
    """One line per method in the paper's form, from ok rows of the retain relearn set at the
    main attack setting: each column of :func:`paper_columns` (one attack pair per k of the
    study) is averaged within a seed (over k, or at the column's k), then over seeds;
    ``<col>_std`` is the std over seeds and ``n`` the number of seeds. A method whose every
    cell failed keeps its line, with ``n`` = 0."""
    rows = paired(rows)
    ok = main_rows(rows)
    failed = main_rows(rows, status="failed")
    methods = method_order(ok + failed)
    spec = paper_columns(r["k"] for r in ok + failed if r.get("k") is not None)
    columns = ["method", "n"] + [c for col in spec for c in (col, f"{col}_std")]
    if not methods:
        return pd.DataFrame(columns=columns)
    if not ok:
        out = pd.DataFrame({"method": methods, "n": 0})
        return out.reindex(columns=columns)
    df = _numeric(pd.DataFrame(ok), {key for key, _, _ in spec.values()})
    per_seed = []
    for col, (key, k, _) in spec.items():
        part = df if k is None else df[df["k"] == k]
        per_seed.append(part.groupby(["method", "seed"])[key].mean().rename(col))
    seeds = pd.concat(per_seed, axis=1)
    g = seeds.groupby(level="method")
    mean, std = g.mean(), g.std().add_suffix("_std")
    out = pd.concat([mean, std], axis=1).reindex(methods)
    out.insert(0, "n", g.size().reindex(methods).fillna(0).astype(int))
    return out.rename_axis("method").reset_index()[columns]


def failed_frame(rows: list[dict]) -> pd.DataFrame:
    """The cells that failed and why, in the order they were recorded."""
    return pd.DataFrame([{c: r.get(c) for c in FAILED} for r in failed_rows(rows)],
                        columns=FAILED)


def main_verdicts(rows: list[dict], relearn_set: str = "retain") -> list[Verdict]:
    """The verdicts of ``relearn_set`` at the main attack learning rate, every step budget,
    by steps, k, then method."""
    setting = main_setting(rows, relearn_set)
    found = verdicts([r for r in ok_rows(rows) if r["relearn_set"] == relearn_set
                      and setting is not None and r["attack_lr"] == setting[0]])
    order = {m: i for i, m in enumerate(method_order(rows))}
    return sorted(found, key=lambda v: (v.attack_lr, v.attack_steps, v.k,
                                        order.get(v.method, 99)))


VERDICT_HEADERS = ["method", "k", "attack steps", "seeds", "gap", "excess (end)",
                   "95% interval", "r", "r 95% interval", "share back", "test − oracle",
                   "distance / oracle's", "seeds relearning", "verdict", "why"]


def _ci(low: float, high: float) -> str:
    return "-" if math.isnan(low) else f"[{low:+.1f}, {high:+.1f}]"


def verdict_table(found: list[Verdict]) -> Table:
    """One line per method, k and attack: the paired comparison with the oracle, what the
    attack added beyond the gap (r), the share of forgotten knowledge back, the utility cost
    and distance against the oracle's, per-seed counts, and the verdict with its reason."""
    rows = [[v.method, str(v.k), str(v.attack_steps), str(v.n), fmt(v.forget_gap, "signed"),
             _plus_minus(v.excess, v.excess_std, "signed"), _ci(v.excess_low, v.excess_high),
             fmt(v.r, "signed"), _ci(v.r_low, v.r_high),
             "-" if math.isnan(v.share) else f"{v.share:.0%}", fmt(v.test_gap, "signed"),
             "-" if math.isnan(v.distance_ratio) else f"{v.distance_ratio:.2f}",
             f"{v.seeds_relearn}/{v.n}", v.verdict, why(v)] for v in found]
    return Table(VERDICT_HEADERS, rows)


def fmt(value, col: str = "") -> str:
    """A number for display: "-" when absent, 3 decimals for distances and AUCs, else 1;
    ``col="signed"`` (and the excess columns) print a sign."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float | int) and not isinstance(value, bool) and (
            col in _SIGNED or col.startswith("excess_k")):
        return f"{float(value):+.1f}"
    if isinstance(value, float):
        return f"{value:.{_DECIMALS.get(col, 1)}f}"
    return str(value)


def _plus_minus(mean, std, col: str) -> str:
    text = fmt(mean, col)
    if text != "-" and not pd.isna(std):
        signed = col in _SIGNED or col.startswith("excess_k")
        text += f" ± {fmt(float(std), '' if signed else col)}"
    return text


def summary_table(df: pd.DataFrame) -> Table:
    """:func:`summary_frame` for display; newer metrics only where some row has them."""
    extra = [c for c in EXTRA if c in df and df[c].notna().any()]
    headers = ["method", "relearn set", "attack lr", "attack steps", "k",
               *SUMMARY.values(), *(EXTRA[c] for c in extra), "seeds"]
    rows = []
    for r in df.to_dict("records"):
        rows.append([str(r["method"]), str(r["relearn_set"]), _lr(r["attack_lr"]),
                     _int(r["attack_steps"]), _int(r["k"]),
                     *(fmt(_float(r[c]), c) for c in [*SUMMARY, *extra]), str(r["n"])])
    return Table(headers, rows)


def paper_display(df: pd.DataFrame) -> Table:
    """:func:`paper_table` for display: mean ± std over seeds where there are several."""
    ks = [int(c[len("forget_k"):]) for c in df.columns
          if c.startswith("forget_k") and not c.endswith("_std")]
    spec = paper_columns(ks)
    headers = ["method", "seeds", *(label for _, _, label in spec.values())]
    rows = [[str(r["method"]), str(r["n"]),
             *(_plus_minus(_float(r[c]), r[f"{c}_std"], c) for c in spec)]
            for r in df.to_dict("records")]
    return Table(headers, rows)


def failed_display(df: pd.DataFrame) -> Table:
    return Table(FAILED, [[_int(v) if c in ("seed", "k") else fmt(v) for c, v in zip(
        FAILED, r, strict=True)] for r in df.itertuples(index=False)])


def _float(v):
    return float(v) if v is not None and not isinstance(v, str) else v


def _int(v) -> str:
    return "-" if v is None or pd.isna(v) else str(int(v))


def _lr(v) -> str:
    return "-" if v is None or pd.isna(v) else f"{float(v):g}"


def markdown(table: Table) -> str:
    cells = [[c.replace("|", "\\|") for c in row] for row in table.rows]
    lines = ["| " + " | ".join(table.headers) + " |", "|" + "---|" * len(table.headers)]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines)


def to_markdown(df: pd.DataFrame) -> str:
    """:func:`summary_frame` as a markdown table."""
    return markdown(summary_table(df))


def write_csv(rows: list[dict], path: Path) -> None:
    atomic_write_text(path, rows_frame(rows).to_csv(index=False))


# 0-1 scores and anomaly indices of the backdoor study need more than one decimal
_DECIMALS.update(cd_auroc_before=3, cd_auroc_after=3, nc_index_before=2, nc_index_after=2,
                 weight_shift=3, shift_asr_cos=3)


def plus_minus(mean, std, col: str = "") -> str:
    """``mean ± std`` with :func:`fmt`'s decimals for ``col``; the std is left out when it is
    absent (one seed)."""
    return _plus_minus(mean, std, col)
