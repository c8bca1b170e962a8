"""Figures from results rows: recovery curves, forget-vs-test after the attack, and linear
mode connectivity. Every figure averages seeds and reads only ok rows."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from dormant.report.tables import (  # noqa: E402
    main_rows,
    method_order,
    ok_rows,
    relearn_sets,
)

REFERENCE_STYLE = {"original": dict(color="grey", ls="--", lw=1.8),
                   "retrain": dict(color="black", lw=2.5)}
_LINESTYLES = ["-", "-.", ":"]


def method_styles(methods: list[str]) -> dict[str, dict]:
    """One colour and line style per method, the same in every figure of a report; 20
    colours and 3 line styles keep ~20 methods apart."""
    cmap = plt.get_cmap("tab20")
    styles, i = {}, 0
    for m in methods:
        if m in REFERENCE_STYLE:
            styles[m] = dict(REFERENCE_STYLE[m])
        else:
            styles[m] = dict(color=cmap(i % 20), ls=_LINESTYLES[(i // 20) % 3], lw=1.4)
            i += 1
    return styles


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _placeholder(path: Path, text: str) -> Path:
    fig, ax = plt.subplots(figsize=(6, 1.6))
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=11)
    ax.axis("off")
    return _save(fig, path)


def _legend(fig, styles: dict) -> None:
    handles = [plt.Line2D([], [], **s) for s in styles.values()]
    ncol = 1 if len(styles) <= 24 else 2
    fig.legend(handles, list(styles), loc="center left", bbox_to_anchor=(1.0, 0.5),
               fontsize=8, frameon=False, ncol=ncol)


def _curve(rows: list[dict]) -> tuple[list, np.ndarray] | None:
    """Steps (0 = before the attack) and forget accuracy averaged over seeds."""
    rows = [r for r in rows if r.get("curve_steps")]
    if not rows:
        return None
    n = min(len(r["curve_steps"]) for r in rows)
    steps = [0] + list(rows[0]["curve_steps"][:n])
    acc = np.mean([[r["forget_acc"]] + list(r["curve_forget_acc"][:n]) for r in rows], axis=0)
    return steps, acc


def recovery_figure(rows: list[dict], path: Path, relearn_set: str = "retain",
                    styles: dict | None = None) -> Path:
    """Held-out forget accuracy along the attack, one panel per k, one line per method, for
    one relearn set at its main attack setting."""
    rows = main_rows(rows, relearn_set)
    if not rows:
        return _placeholder(path, f"no successful cells for relearn set {relearn_set!r}")
    methods = method_order(rows)
    styles = styles or method_styles(methods)
    ks = sorted({r["k"] for r in rows})
    fig, axes = plt.subplots(1, len(ks), figsize=(4.6 * len(ks), 3.8), squeeze=False,
                             sharey=True)
    shown = {}
    for ax, k in zip(axes[0], ks, strict=True):
        for m in methods:
            curve = _curve([r for r in rows if r["k"] == k and r["method"] == m])
            if curve:
                ax.plot(*curve, **styles[m])
                shown[m] = styles[m]
        leak = " (none leaked)" if k == 0 else ""
        ax.set_title(f"relearn on {relearn_set}, k = {k}{leak}", fontsize=10)
        ax.set_xlabel("attack steps")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("held-out forget accuracy (%)")
    _legend(fig, shown)
    fig.tight_layout()
    return _save(fig, path)


def scatter_plot(rows: list[dict], styles: dict | None = None):
    """The figure of :func:`scatter_figure`, unsaved (``None`` when nothing is plotted):
    held-out forget accuracy against test accuracy, both at the end of the k = 0 attack
    (retain set, main setting), one labelled point per method (mean over seeds)."""
    rows = [r for r in main_rows(rows) if r["k"] == 0]
    if not rows:
        return None
    methods = method_order(rows)
    styles = styles or method_styles(methods)
    fig, ax = plt.subplots(figsize=(6.4, 5))
    points = []
    for m in methods:
        rs = [r for r in rows if r["method"] == m]
        x = np.nanmean([_num(r.get("test_acc_attacked")) for r in rs])
        y = np.nanmean([_num(r.get("forget_acc_attacked_last")) for r in rs])
        if np.isnan(x) or np.isnan(y):
            continue
        st = styles[m]
        ax.scatter([x], [y], color=st["color"], s=60 if m in REFERENCE_STYLE else 36,
                   marker="s" if m in REFERENCE_STYLE else "o", zorder=3)
        points.append((x, y, m))
    ax.margins(0.15)  # room for the labels inside the frame
    ax.set_xlabel("test accuracy after the attack (%)")
    ax.set_ylabel("held-out forget accuracy after the attack (%)")
    ax.set_title("after the retain-only attack (k = 0)", fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()  # before the labels: it moves the axes, and the labels sit in pixels
    place_labels(fig, ax, points)
    return fig


# offsets tried for a label, in points from its point: nearest first, 16 directions a ring
_RINGS = (6, 12, 20, 30, 42, 56, 72, 90)
_ANGLES = np.deg2rad([30, 150, 210, 330, 90, 270, 0, 180, 60, 120, 240, 300, 15, 165, 195, 345])
_MARKER_PX = 6.0  # half the side of a marker's box, in pixels at the figure's dpi


def place_labels(fig, ax, points: list[tuple[float, float, str]], fontsize: float = 7) -> list:
    """Each point's label at the nearest offset where its box overlaps no label placed
    before it and no marker, inside the axes when possible; a label set away from its point
    gets a thin line to it. Methods that land on nearly the same accuracies (the original
    and a method that did nothing) stay readable: the labels fan out around the points."""
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    pad = 1.5
    markers = [ax.transData.transform((x, y)) for x, y, _ in points]
    marker_boxes = [(px - _MARKER_PX, py - _MARKER_PX, px + _MARKER_PX, py + _MARKER_PX)
                    for px, py in markers]
    placed: list[tuple[float, float, float, float]] = []
    texts = []

    def clash(box, others) -> float:
        x0, y0, x1, y1 = box
        return sum(max(0.0, min(x1, b[2]) - max(x0, b[0]) + pad)
                   * max(0.0, min(y1, b[3]) - max(y0, b[1]) + pad) for b in others)

    for x, y, name in points:
        best = None
        for r in _RINGS:
            for a in _ANGLES:
                dx, dy = r * np.cos(a), r * np.sin(a)
                t = ax.annotate(name, (x, y), textcoords="offset points", xytext=(dx, dy),
                                fontsize=fontsize, ha=_align(dx, "left", "right"),
                                va=_align(dy, "bottom", "top"))
                e = t.get_window_extent(renderer)
                box = (e.x0, e.y0, e.x1, e.y1)
                inside = (e.x0 >= frame.x0 and e.x1 <= frame.x1 and e.y0 >= frame.y0
                          and e.y1 <= frame.y1)
                cost = (clash(box, placed) + clash(box, marker_boxes), not inside, r)
                t.remove()
                if best is None or cost < best[0]:
                    best = (cost, dx, dy, box)
                if cost[:2] == (0, False):
                    break
            if best[0][:2] == (0, False):
                break
        _, dx, dy, box = best
        far = np.hypot(dx, dy) > _RINGS[0]
        texts.append(ax.annotate(
            name, (x, y), textcoords="offset points", xytext=(dx, dy), fontsize=fontsize,
            ha=_align(dx, "left", "right"), va=_align(dy, "bottom", "top"),
            arrowprops=dict(arrowstyle="-", lw=0.5, color="0.5", shrinkA=0, shrinkB=3)
            if far else None))
        placed.append(box)
    return texts


def _align(d: float, positive: str, negative: str) -> str:
    return positive if d > 1e-6 else negative if d < -1e-6 else "center"


def scatter_figure(rows: list[dict], path: Path, styles: dict | None = None) -> Path:
    """Held-out forget accuracy against test accuracy after the k = 0 attack, one labelled
    point per method (:func:`scatter_plot`). Good unlearning sits bottom right: the attack
    neither restores the forget set nor costs test accuracy."""
    fig = scatter_plot(rows, styles)
    if fig is None:
        return _placeholder(path, "no successful k = 0 cells on the retain set")
    return _save(fig, path)


def _num(v) -> float:
    return float("nan") if v is None else float(v)


def lmc_means(rows: list[dict]) -> dict[str, dict]:
    """Per method, its LMC curves averaged over seeds (one row per seed: the curve belongs to
    the unlearned model, not to the attack)."""
    per: dict[str, dict[object, dict]] = {}
    for r in ok_rows(rows):
        if isinstance(r.get("lmc"), dict) and r["lmc"].get("t"):
            per.setdefault(r["method"], {}).setdefault(r.get("seed"), r["lmc"])
    out = {}
    for m, by_seed in per.items():
        curves = list(by_seed.values())
        t = curves[0]["t"]
        same = [c for c in curves if c["t"] == t]
        out[m] = {key: np.mean([c[key] for c in same], axis=0) for key in curves[0]
                  if all(key in c for c in same)}
    return out


def lmc_figure(rows: list[dict], path: Path, styles: dict | None = None) -> Path:
    """Loss (log scale) and accuracy on each evaluated set along
    ``theta(t) = (1 - t)·theta_pre + t·theta_method``; the retrain line is the
    pre -> oracle reference. One line per method, shared legend."""
    curves = lmc_means(rows)
    if not curves:
        return _placeholder(path, "no linear mode connectivity recorded in these rows")
    methods = [m for m in method_order(ok_rows(rows)) if m in curves]
    styles = styles or method_styles(methods)
    names = list(dict.fromkeys(key[: -len("_loss")] for c in curves.values() for key in c
                               if key.endswith("_loss")))
    fig, axes = plt.subplots(2, len(names), figsize=(4.2 * len(names), 6.4), squeeze=False,
                             sharex=True)
    for j, name in enumerate(names):
        for m in methods:
            c = curves[m]
            if f"{name}_loss" in c:
                axes[0][j].plot(c["t"], c[f"{name}_loss"], **styles[m])
                axes[1][j].plot(c["t"], c[f"{name}_acc"], **styles[m])
        axes[0][j].set_title(f"{name}", fontsize=10)
        axes[0][j].set_yscale("log")
        axes[1][j].set_xlabel("t  (0 = original, 1 = unlearned)")
        for ax in axes[:, j]:
            ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("loss")
    axes[1][0].set_ylabel("accuracy (%)")
    _legend(fig, {m: styles[m] for m in methods})
    fig.tight_layout()
    return _save(fig, path)


def other_recovery_figures(rows: list[dict], out: Path, styles: dict | None = None
                           ) -> dict[str, Path]:
    """One recovery figure per relearn set other than retain: ``recovery-<set>.png``."""
    paths = {}
    for s in relearn_sets(rows):
        if s != "retain" and main_rows(rows, s):
            safe = "".join(ch if ch.isalnum() else "-" for ch in s)
            paths[s] = recovery_figure(rows, Path(out) / f"recovery-{safe}.png", s, styles)
    return paths
