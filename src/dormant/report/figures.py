"""Recovery curves: held-out forget accuracy against attack steps, one line per method."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

STYLE = {"original": dict(color="grey", ls="--"), "retrain": dict(color="black", lw=2.5)}


def recovery_figure(rows: list[dict], path: Path) -> Path:
    ks = sorted({r["k"] for r in rows})
    fig, axes = plt.subplots(1, len(ks), figsize=(5.2 * len(ks), 4), squeeze=False, sharey=True)
    for ax, k in zip(axes[0], ks, strict=True):
        by_method: dict[str, list[dict]] = {}
        for r in rows:
            if r["k"] == k:
                by_method.setdefault(r["method"], []).append(r)
        for method, rs in by_method.items():
            n = min(len(r["curve_steps"]) for r in rs)
            steps = [0] + rs[0]["curve_steps"][:n]
            acc = np.mean([[r["forget_acc"]] + r["curve_forget_acc"][:n] for r in rs], axis=0)
            ax.plot(steps, acc, label=method, **STYLE.get(method, {}))
        ax.set_title(f"relearning attack, k = {k} leaked" + (" (retain only)" if k == 0 else ""))
        ax.set_xlabel("attack steps")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("held-out forget accuracy (%)")
    axes[0][-1].legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
