"""The backdoor report's view of the attack itself: ASR against clean-accuracy cost (attack
against its random control, so a wake that only comes with utility damage shows as such),
how each ``simulate`` request was designed on the surrogate and how well the first-order
proxy predicted the real simulation, where each method moved the weights, and retrain's
spread over training seeds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from dormant.report.figures import _placeholder, _save, method_styles, plt
from dormant.report.tables import Table, fmt, ok_rows, plus_minus

SHOWN = {"attack": ("o", "-"), "random-equal": ("x", "--"), "random-clean": ("^", ":")}


def cost_figure(rows: list[dict], path: Path) -> Path:
    """One point per (method, condition, seed): clean-accuracy drop (x) against ASR after
    (y); per method and seed a line joins the attack to its random-equal control."""
    ok = [r for r in ok_rows(rows) if r.get("condition") in SHOWN
          and r.get("asr_after") is not None and r.get("clean_acc_before") is not None]
    if not ok:
        return _placeholder(path, "no attack or random-control cells")
    df = pd.DataFrame(ok)
    df["clean_drop"] = df["clean_acc_before"] - df["clean_acc_after"]
    styles = method_styles(list(dict.fromkeys(df["method"])))
    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    for (m, seed), part in df.groupby(["method", "seed"], sort=False):
        color = styles[m]["color"]
        pts = {c: part[part["condition"] == c] for c in SHOWN}
        if len(pts["attack"]) and len(pts["random-equal"]):
            a, r = pts["attack"].iloc[0], pts["random-equal"].iloc[0]
            ax.plot([r["clean_drop"], a["clean_drop"]], [r["asr_after"], a["asr_after"]],
                    color=color, alpha=0.35, linewidth=1)
        for c, (marker, _) in SHOWN.items():
            p = pts[c]
            if not len(p):
                continue
            ax.scatter(p["clean_drop"], p["asr_after"], color=color, marker=marker, s=36,
                       label=f"{m} {c}" if seed == df["seed"].min() else None)
    dormant = df[df["condition"] == "attack"]["asr_before"].mean()
    ax.axhline(dormant, color="grey", linewidth=0.8, linestyle=":")
    ax.text(ax.get_xlim()[1], dormant, " dormant", va="center", fontsize=7, color="grey")
    ax.axvline(5.0, color="grey", linewidth=0.8, linestyle="--")
    ax.set_xlabel("clean-accuracy drop (points)")
    ax.set_ylabel("ASR after the deletion (%)")
    ax.set_ylim(-2, 102)
    ax.set_title("ASR against clean-accuracy cost: attack (o) vs random request with the "
                 "same steps (x)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    fig.tight_layout()
    return _save(fig, path)


def _spearman(a: list[float], b: list[float]) -> float | None:
    if len(a) < 3:
        return None
    ra, rb = pd.Series(a).rank(), pd.Series(b).rank()
    if ra.std() == 0 or rb.std() == 0:
        return None
    return float(np.corrcoef(ra, rb)[0, 1])


def design_display(rows: list[dict]) -> Table:
    """Per attack row with a ``simulate`` design: the chosen candidate request, its
    simulated surrogate ASR rise and clean drop, the victim's real ASR rise, and the rank
    correlation between the proxy's mean score and the simulated rise over the candidates."""
    lines = []
    for r in ok_rows(rows):
        d = r.get("design")
        if r.get("condition") != "attack" or not d:
            continue
        cands = d["candidates"]
        chosen = next(c for c in cands if c["name"] == d["chosen"])
        rho = _spearman([c["proxy"] for c in cands], [c["asr_rise"] for c in cands])
        lines.append([str(r["method"]), str(r["seed"]), d["chosen"],
                      fmt(chosen["asr_rise"]), fmt(chosen["clean_drop"]),
                      fmt(r["asr_after"] - r["asr_before"]), str(r.get("carriers", "-")),
                      "-" if rho is None else f"{rho:+.2f}",
                      f"{sum(c['seconds'] for c in cands) + d['proxy_seconds']:.1f}"])
    return Table(["method", "seed", "chosen", "surrogate ASR rise", "surrogate clean drop",
                  "victim ASR rise", "carriers in request", "proxy vs simulation (Spearman)",
                  "search s"], lines)


def mechanism_display(rows: list[dict]) -> Table:
    """Per method and unlearning condition, mean ± std over seeds: the request's natural
    carriers of the trigger, the L2 length of the weight move, its cosine with the
    ASR-raising direction, and the forget-set accuracy drop."""
    ok = [r for r in ok_rows(rows) if r.get("weight_shift") is not None]
    if not ok:
        return Table(["method", "condition"], [])
    df = pd.DataFrame(ok)
    df["forget_drop"] = df["forget_acc_before"] - df["forget_acc_after"]
    keys = ["carriers", "weight_shift", "shift_asr_cos", "forget_drop"]
    lines = []
    for (m, c), part in df.groupby(["method", "condition"], sort=False):
        lines.append([str(m), str(c), *(plus_minus(part[k].astype(float).mean(),
                                                   part[k].astype(float).std(), k)
                                        for k in keys)])
    return Table(["method", "condition", "carriers in request", "weight move (L2)",
                  "cos(move, ASR-raising direction)", "forget drop"], lines)


def retrain_display(rows: list[dict]) -> Table:
    """Retrain per condition and seed: the ASR after under every training seed."""
    lines = []
    for r in ok_rows(rows):
        seeds = r.get("asr_after_seeds")
        if r.get("method") != "retrain" or not seeds:
            continue
        lines.append([str(r["condition"]), str(r["seed"]), str(len(seeds)),
                      plus_minus(r["asr_after"], r.get("asr_after_sd")),
                      ", ".join(f"{a:.1f}" for a in seeds)])
    return Table(["condition", "seed", "training seeds", "ASR after (mean ± sd)",
                  "per training seed"], lines)
