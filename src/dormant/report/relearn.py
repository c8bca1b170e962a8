"""The relearning study's report: results.csv, report.md, the figures and one
self-contained report.html, all from the rows of results.jsonl."""

from __future__ import annotations

from pathlib import Path

from dormant.report.figures import (
    lmc_figure,
    method_styles,
    other_recovery_figures,
    recovery_figure,
    scatter_figure,
)
from dormant.report.html import Block, to_html, to_markdown
from dormant.report.tables import (
    failed_display,
    failed_frame,
    main_setting,
    method_order,
    normalize_row,
    ok_rows,
    paper_display,
    paper_table,
    relearning_verdict,
    summary_frame,
    summary_table,
    write_csv,
)
from dormant.store.files import atomic_write_text


def _describe(rows: list[dict]) -> str:
    ok = ok_rows(rows)
    first = ok[0] if ok else normalize_row(rows[0])
    text = (f"Dataset `{first.get('dataset', '?')}`, model `{first.get('model', '?')}`, "
            f"forget set `{first.get('forget', '?')}`")
    if "forget_size" in first:
        text += (f" ({first['forget_size']} examples, {first.get('heldout_size', '?')} held "
                 "out)")
    if first.get("train_fit_acc") is not None:
        text += f"; the original fits {first['train_fit_acc']:.1f}% of its training set"
    n_failed = len(rows) - len(ok)
    return text + f". {len(ok)} cells succeeded, {n_failed} failed."


def _verdict(rows: list[dict]) -> str:
    v = relearning_verdict(rows)
    if v["oracle_recovery"] is None:
        return "No k = 0 cells of the retrain oracle succeeded, so there is no verdict."
    names = ", ".join(f"{m} ({r:+.1f})" for m, r in v["dormant"]) or "none"
    return (f"Retain-only attack (k = 0): the retrain oracle recovers "
            f"{v['oracle_recovery']:+.1f} points; methods recovering at least 20 points more: "
            f"{names}. Relearning effect shown: {'yes' if v['shown'] else 'no'}.")


def _blocks(rows: list[dict], title: str, figs: dict[str, Path]) -> list[Block]:
    setting = main_setting(rows)
    at = ("" if setting is None else
          f" Main attack setting: lr {setting[0]:g}, {setting[1]} steps.")
    failed = failed_frame(rows)
    blocks = [
        Block("h1", title),
        Block("p", _describe(rows)),
        Block("p", _verdict(rows)),
        Block("h2", "Methods"),
        Block("p", "Accuracies in %; *forget* is the held-out forget split. From ok cells "
                   "relearning on the retain set at the main attack setting; mean ± std over "
                   "seeds. *forget after attack* is the best point of the attack. ToW = "
                   "retain × (1 − forget) × test. L2 distances over weights and biases. The "
                   "barrier is the retain-loss barrier on the straight line from the original "
                   "to the model. MIA AUC: SVC membership inference of the forget set against "
                   "unseen test images (0.5 = looks unseen). AURC: mean recovery in points "
                   "over log attack steps." + at),
        Block("table", table=paper_display(paper_table(rows))),
        Block("h2", "Figures"),
        Block("img", "held-out forget accuracy during the relearning attack", path=figs["png"]),
    ]
    for key, path in figs.items():
        if key.startswith("recovery-"):
            blocks.append(Block("img", f"recovery, relearning on {key[len('recovery-'):]}",
                                path=path))
    blocks += [
        Block("img", "forget against test accuracy after the k = 0 attack",
              path=figs["scatter"]),
        Block("img", "linear mode connectivity from the original (the retrain line: original "
                     "to oracle)", path=figs["lmc"]),
        Block("h2", "All settings"),
        Block("p", "Mean over seeds per method, relearn set, attack setting and k. "
                   "*recovery* = best held-out forget accuracy during the attack minus forget "
                   "accuracy after unlearning (points)."),
        Block("table", table=summary_table(summary_frame(rows))),
        Block("h2", "Failed cells"),
    ]
    if failed.empty:
        blocks.append(Block("p", "None."))
    else:
        blocks.append(Block("table", table=failed_display(failed)))
    return blocks


def write_relearn_report(rows: list[dict], out: Path, title: str = "Relearning study") -> dict:
    """``results.csv``, ``report.md``, ``recovery.png`` (plus ``recovery-<set>.png`` per
    other relearn set), ``scatter.png``, ``lmc.png`` and the self-contained ``report.html``
    in ``out``; returns their paths by kind."""
    if not rows:
        raise ValueError("no results rows to report")
    out = Path(out)
    rows = [normalize_row(r) for r in rows]
    styles = method_styles(method_order(rows))
    paths: dict[str, Path] = {"csv": out / "results.csv", "md": out / "report.md",
                              "html": out / "report.html"}
    write_csv(rows, paths["csv"])
    figs = {"png": recovery_figure(rows, out / "recovery.png", styles=styles)}
    figs.update({f"recovery-{s}": p for s, p in other_recovery_figures(rows, out, styles).items()})
    figs["scatter"] = scatter_figure(rows, out / "scatter.png", styles)
    figs["lmc"] = lmc_figure(rows, out / "lmc.png", styles)
    blocks = _blocks(rows, title, figs)
    atomic_write_text(paths["md"], to_markdown(blocks))
    atomic_write_text(paths["html"], to_html(blocks, title))
    return {**paths, **figs}
