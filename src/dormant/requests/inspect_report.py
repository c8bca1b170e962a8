"""``dormant inspect``'s outputs: ``inspection.json`` (the record), ``flagged.png`` (each
contributor's flagged share per detector, with its interval) and ``report.md`` /
``report.html``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from dormant.report.figures import _save, plt
from dormant.report.html import Block, to_html, to_markdown
from dormant.report.tables import Table
from dormant.store.files import atomic_write_text

SHOWN = 12  # contributors the figure shows, most flagged first


def contributors_table(record: dict) -> Table:
    dets = list(record["detectors"])
    rows = []
    for r in record["contributors"]:
        cells = [f"{r['flagged'][d]}/{r['sampled']} = {100 * r['share'][d]:.1f}% "
                 f"[{100 * r['interval'][d][0]:.1f}, {100 * r['interval'][d][1]:.1f}]"
                 for d in dets]
        rows.append([r["contributor"], str(r["images"]), str(r["sampled"]), *cells,
                     f"{100 * r['score']:+.1f}"])
    return Table(["contributor", "training images", "sampled",
                  *(f"{record['detectors'][d]['label']} flagged" for d in dets),
                  "excess over the sample's rate (mean, points)"], rows)


def flagged_figure(record: dict, path: Path) -> Path:
    rows = record["contributors"][:SHOWN]
    dets = list(record["detectors"])
    fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(rows) + 1.5), 3.2))
    width = 0.8 / max(1, len(dets))
    at = np.arange(len(rows))
    for i, d in enumerate(dets):
        share = np.array([100 * r["share"][d] for r in rows])
        lo = np.array([100 * r["interval"][d][0] for r in rows])
        hi = np.array([100 * r["interval"][d][1] for r in rows])
        ax.bar(at + i * width, share, width, yerr=[share - lo, hi - share], capsize=2,
               label=record["detectors"][d]["label"])
    ax.set_xticks(at + width * (len(dets) - 1) / 2,
                  [r["contributor"] for r in rows], rotation=30, ha="right")
    ax.set_ylabel("flagged share of sampled images (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8)
    return _save(fig, path)


def write_inspection(record: dict, out: Path) -> dict[str, Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "inspection.json", "html": out / "report.html",
             "markdown": out / "report.md", "figure": out / "flagged.png"}
    atomic_write_text(paths["json"], json.dumps(record, indent=1) + "\n")
    flagged_figure(record, paths["figure"])
    title = f"Inspection of {record['model']} v{record['version']}"
    rules = Table(["detector", "flags an image when", "flagged in the sample"],
                  [[x["label"], x["rule"], f"{x['flagged']}/{record['sampled']}"]
                   for x in record["detectors"].values()])
    blocks = [
        Block("h1", title),
        Block("p", f"A seeded random {100 * record['share']:g}% of the "
                   f"{record['training_ids']} training ids this version holds (seed "
                   f"{record['seed']}; {record['deleted_left_out']} deleted ids left out): "
                   f"{record['sampled']} images, each scanned by the per-sample detectors with "
                   f"the model itself (checkpoint sha256 {record['sha256'][:12]})."),
        Block("table", table=rules),
        Block("h2", "Contributors, most suspect first"),
        Block("p", "Flagged share of each contributor's sampled images with its 95% Wilson "
                   "interval; the rank is the mean over detectors of the share's excess over "
                   "everyone else's flagged rate in the sample (a detector that flags "
                   "everyone alike ranks no one). Spectral signatures flag nothing in a "
                   "class with fewer than 14 sampled images." + ("" if record["manifest"] else
                                  " The model has no data manifest, so every image is "
                                  "unattributed: add it with `dormant store add --manifest`.")),
        Block("table", table=contributors_table(record)),
        Block("img", "flagged share per contributor and detector", path=paths["figure"]),
    ]
    atomic_write_text(paths["html"], to_html(blocks, f"dormant: {title}"))
    atomic_write_text(paths["markdown"], to_markdown(blocks))
    return paths
