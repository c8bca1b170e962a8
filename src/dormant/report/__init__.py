"""Reports from results rows: CSV, markdown and figures."""

from __future__ import annotations

from pathlib import Path

from dormant.report.figures import recovery_figure
from dormant.report.tables import rows_frame, summary_frame, to_markdown, write_csv
from dormant.store.files import atomic_write_text


def write_relearn_report(rows: list[dict], out: Path, title: str = "Relearning study") -> dict:
    """``results.csv``, ``report.md`` and ``recovery.png`` in ``out``; returns their paths."""
    out = Path(out)
    paths = {"csv": out / "results.csv", "md": out / "report.md", "png": out / "recovery.png"}
    write_csv(rows, paths["csv"])
    recovery_figure(rows, paths["png"])
    first = rows[0]
    text = [
        f"# {title}",
        "",
        f"dataset `{first['dataset']}`, model `{first['model']}`, forget set "
        f"`{first['forget']}` ({first['forget_size']} examples, {first['heldout_size']} held "
        f"out), original fits {first['train_fit_acc']:.1f}% of its training set.",
        "",
        "Accuracies in %. *forget* is the held-out forget split. *recovery* = best held-out "
        "forget accuracy during the attack minus forget accuracy after unlearning (points).",
        "",
        to_markdown(summary_frame(rows)),
        "",
        "![recovery curves](recovery.png)",
        "",
    ]
    atomic_write_text(paths["md"], "\n".join(text))
    return paths


__all__ = ["recovery_figure", "rows_frame", "summary_frame", "to_markdown", "write_csv",
           "write_relearn_report"]
