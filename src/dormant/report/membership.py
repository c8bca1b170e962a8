"""The report's per-example membership section (``mia: [lira, rmia, ulira]``): a table per
method, mean ± std over seeds, and a figure of the held-out forget ids' LiRA scores, each
method beside the oracle's, after unlearning and after the attack. Absent from a study that
ran no per-example attack."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import SymmetricalLogLocator

from dormant.report.figures import _legend, _save, method_styles
from dormant.report.html import Block
from dormant.report.tables import Table, _numeric, _plus_minus, main_rows, method_order

COLUMNS = {
    "mia_auc": "SVC AUC (population)",
    "lira_auc": "LiRA AUC",
    "lira_tpr_at_1pct": "LiRA TPR at 1% FPR",
    "lira_auc_attacked": "LiRA AUC after attack",
    "rmia_auc": "RMIA AUC (1 reference)",
    "rmia_auc_attacked": "RMIA AUC after attack",
    "ulira_auc": "U-LiRA AUC",
    "ulira_auc_attacked": "U-LiRA AUC after attack",
    "forgetting_quality": "challenge forgetting quality",
    "challenge_score": "challenge score",
}


def _rows(rows: list[dict]) -> list[dict]:
    """Ok rows of the main setting (retain relearn set) at the smallest k with an audit."""
    found = [r for r in main_rows(rows) if r.get("mia_shadows")]
    if not found:
        return []
    first = min(r["k"] for r in found)
    return [r for r in found if r["k"] == first]


def membership_table(rows: list[dict]) -> Table | None:
    found = _rows(rows)
    if not found:
        return None
    cols = [c for c in COLUMNS if any(r.get(c) is not None for r in found)]
    df = _numeric(pd.DataFrame(found), cols)
    seeds = df.groupby(["method", "seed"])[cols].mean()
    g = seeds.groupby(level="method")
    mean, std = g.mean(), g.std()
    out = []
    for m in method_order(found):
        shadows = sorted({(r["mia_shadows"], r.get("mia_variance") or "?")
                          for r in found if r["method"] == m})
        out.append([m, str(int(g.size()[m])),
                    ", ".join(f"{n} ({v})" for n, v in shadows),
                    *(_plus_minus(mean.loc[m, c], std.loc[m, c], "mia_auc") for c in cols)])
    return Table(["method", "seeds", "shadows (variance)", *(COLUMNS[c] for c in cols)], out)


PANELS = [("lira_forget_scores", "LiRA, after unlearning",
           "LiRA score (log likelihood ratio; > 0: member-like)"),
          ("lira_forget_scores_attacked", "LiRA, after the attack",
           "LiRA score (log likelihood ratio; > 0: member-like)"),
          ("ulira_forget_gaps", "U-LiRA, after unlearning",
           "score gap, unlearned - retrained (> 0: given away)")]


def lira_figure(rows: list[dict], path: Path, styles: dict | None = None) -> Path | None:
    """The distribution (ECDF) of the held-out forget ids' per-example scores under each
    method, the first seed's: LiRA after unlearning and after the attack (the oracle's is
    the black line a method that forgot should lie on), and U-LiRA's mean score gap per id
    where the study ran it."""
    found = _rows(rows)
    if not found or not any(r.get("lira_forget_scores") for r in found):
        return None
    seed = min(r["seed"] for r in found)
    by_method = {r["method"]: r for r in found if r["seed"] == seed}
    methods = [m for m in method_order(found) if m in by_method]
    styles = styles or method_styles(methods)
    panels = [p for p in PANELS if any(by_method[m].get(p[0]) for m in methods)]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.8), sharey=True,
                             squeeze=False)
    for ax, (key, title, label) in zip(axes[0], panels, strict=True):
        for m in methods:
            scores = [v for v in by_method[m].get(key) or [] if v is not None]
            if scores:
                v = np.sort(np.asarray(scores, float))
                ax.step(v, np.arange(1, len(v) + 1) / len(v), where="post", **styles[m])
        ax.axvline(0, color="grey", lw=0.8, alpha=0.6)
        # a method far off the oracle gives ratios of 1e6 and more: log beyond +-1
        ax.set_xscale("symlog", linthresh=1)
        ax.xaxis.set_major_locator(SymmetricalLogLocator(base=100, linthresh=1))
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(label, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("share of held-out forget ids")
    _legend(fig, {m: styles[m] for m in methods})
    fig.tight_layout()
    return _save(fig, path)


def membership_blocks(rows: list[dict], figure: Path | None) -> list[Block]:
    table = membership_table(rows)
    if table is None:
        return []
    found = _rows(rows)
    shadows = sorted({r["mia_shadows"] for r in found})
    variance = sorted({r.get("mia_variance") or "?" for r in found})
    models = sorted({r["challenge_models"] for r in found if r.get("challenge_models")})
    text = (f"Per-example membership inference on the held-out forget split, "
            f"{'/'.join(map(str, shadows))} shadow models per seed ({'/'.join(variance)} "
            "variance), at the main attack setting and the smallest k. *LiRA* and *RMIA*: "
            "AUC of the model's scores on the held-out ids against the same ids' scores "
            "under shadows that never trained on the forget set; 0.5 reads \"as if never "
            "trained on them\" (what independent retrains give on average; the oracle shares "
            "the original's initialisation and can sit a little off), 1 \"as the original\", "
            "and far "
            "below 0.5 \"less than never seen\", which gives unlearning away as surely. "
            "*TPR at 1% FPR*: the share of held-out ids that still give themselves away at a "
            "threshold that 1% of never-trained scores pass. *U-LiRA*: AUC of telling this "
            "method's models from models retrained without the forget set, per held-out id, "
            "over the shadow splits (0.5: indistinguishable); *after attack*: both sides "
            "after the same attack. *Challenge*: the NeurIPS 2023 unlearning challenge's "
            "forgetting quality and score from the same model pairs. *SVC AUC*, the "
            "study's population attack (forget ids against test images), is beside them for "
            "comparison")
    text += (f", {'/'.join(map(str, models))} models per side (the challenge used 512; with "
             "few models its epsilons are coarse)." if models else ".")
    blocks = [Block("h2", "Membership inference per example"), Block("p", text),
              Block("table", table=table)]
    if figure is not None:
        blocks.append(Block("img", "per-example scores of the held-out forget ids (first "
                                   "seed): each method beside the oracle (black)",
                            path=figure))
    return blocks
