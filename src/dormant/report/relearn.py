"""The relearning study's report: results.csv, report.md, the figures and one
self-contained report.html, all from the rows of results.jsonl."""

from __future__ import annotations

from pathlib import Path

from dormant.experiments.calibrate import UTILITY_MARGIN
from dormant.experiments.protocol import PROTOCOL
from dormant.experiments.relearn import fit_note
from dormant.experiments.verdicts import (
    FORGET_MARGIN,
    GROUP,
    RELEARN_EXCESS,
    VERDICTS,
    Verdict,
    relearning_shown,
    verdicts,
)
from dormant.report.figures import (
    lmc_figure,
    method_styles,
    other_recovery_figures,
    recovery_figure,
    scatter_figure,
)
from dormant.report.html import Block, to_html, to_markdown
from dormant.report.membership import lira_figure, membership_blocks
from dormant.report.tables import (
    REFERENCE_ORDER,
    Table,
    failed_display,
    failed_frame,
    main_setting,
    main_verdicts,
    method_order,
    normalize_row,
    ok_rows,
    paired,
    paper_display,
    paper_table,
    summary_frame,
    summary_table,
    verdict_table,
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
    text += f". {len(ok)} cells succeeded, {n_failed} failed."
    notes = list(dict.fromkeys(n for r in ok if (n := fit_note(r))))
    return " ".join([text, *notes, protocol_line(ok)]).strip()


def protocol_line(rows: list[dict]) -> str:
    """Which frozen protocol made the rows and which one judges them; a mismatch is said."""
    # the reference rows use no rule of the protocol (their keys leave it out)
    tags = sorted({r["protocol"] for r in rows if r.get("protocol")
                   and r.get("method") not in ("original", "retrain")})
    if not tags:
        return ""
    if tags == [PROTOCOL.tag]:
        return f"Protocol {PROTOCOL.tag} (experiments/protocol.yaml)."
    return (f"**Rows made under protocol {', '.join(tags)}, judged under {PROTOCOL.tag}: "
            "rerun them under the current protocol.**")


def verdict_text(found: list[Verdict]) -> str:
    """The study's verdict in the words of ``dormant.experiments.verdicts``, per attack
    setting and k."""
    if not found:
        return "No cell has both a method and the retrain oracle, so there is no verdict."
    parts = []
    settings = sorted({(v.attack_lr, v.attack_steps) for v in found})
    for lr, steps in settings:
        for k in sorted({v.k for v in found}):
            at = [v for v in found if (v.attack_lr, v.attack_steps, v.k) == (lr, steps, k)
                  and v.method not in REFERENCE_ORDER]
            if not at:
                continue
            words = []
            for name in VERDICTS:
                names = [f"{v.method} ({v.excess:+.1f})" if name != "does-not-forget"
                         else v.method for v in at if v.verdict == name]
                if names:
                    words.append(f"{name}: {', '.join(names)}")
            shown = "yes" if relearning_shown(
                [v for v in found if (v.attack_lr, v.attack_steps) == (lr, steps)], k) else "no"
            where = f"{steps} attack steps, " if len(settings) > 1 else ""
            parts.append(f"{where}k = {k}: " + ("; ".join(words) or "no methods")
                         + f". Relearning shown (two or more methods relearn): {shown}.")
    return ("Verdicts against the retrain oracle attacked in the same cell (excess = attacked "
            "forget accuracy at the end of the attack minus the oracle's, in points). "
            + " ".join(parts))


RULES = (f"*relearns*: excess ≥ {RELEARN_EXCESS:g} with both its 95% interval and r's above 0, "
         f"whatever the gap; *does-not-forget*: otherwise, when the forget accuracy after "
         f"unlearning is more than {FORGET_MARGIN:g} points above the oracle's and r's "
         f"interval reaches 0; *over-forgets*: otherwise, when it is more than "
         f"{FORGET_MARGIN:g} points below and the excess interval reaches 0; *resists*: the "
         f"excess interval's upper end below {RELEARN_EXCESS:g} (an equivalence); "
         f"*inconclusive*: anything else, one seed included.")
"""The verdict rules in one sentence, for every report."""


def mia_note(rows: list[dict]) -> str:
    """How to read the MIA AUC column, with the study's own reference values: an AUC far
    below 0.5 for every model, the original included, is the forget set's difficulty, not an
    attack that works backwards."""
    refs = {}
    for m in REFERENCE_ORDER:
        vals = [r["mia_auc"] for r in ok_rows(rows)
                if r["method"] == m and isinstance(r.get("mia_auc"), int | float)]
        if vals:
            refs[m] = sum(vals) / len(vals)
    text = ("*Reading MIA AUC*: the chance that the attack (an SVC on each image's confidence "
            "and entropies, trained on retain images as members and half the test set as "
            "non-members) scores a held-out forget image as more member-like than an image "
            "of the other test half. 0.5: no difference; above 0.5 the forget set still looks "
            "like training data. It also measures how the forget set differs from ordinary "
            "test images: a set of hard examples (such as a class's atypical ones) gets "
            "lower confidence than typical images from every model, so its AUC can sit far "
            "below 0.5 even for the original, which trained on it. That is the set's "
            "difficulty, not an inverted attack: do not read 1 − AUC as memory. Read each "
            "method against the two references instead: the retrain oracle's AUC (a model "
            "that never saw the set) and the original's (one that trained on it); the "
            "closer to the oracle's, the less the forget set stands out.")
    if {"original", "retrain"} <= refs.keys():
        text += (f" Here the original scores {refs['original']:.3f} and the oracle "
                 f"{refs['retrain']:.3f} (mean over seeds).")
    return text


def _calibration_blocks(rows: list[dict]) -> list[Block]:
    """Which strength every method ran at, and what each candidate reached."""
    seen, lines = set(), []
    for r in ok_rows(rows):
        for c in r.get("calibration") or []:
            key = (r.get("forget"), r["method"], c["stage"])
            if key in seen:
                continue
            seen.add(key)
            unit = "% on the leakable ids" if c["target"] == "leakable" else " L2 from θ_pre"
            kept = c.get("retain") or [None] * len(c["values"])
            tried = ", ".join(f"{v:.3g} → {s:.3g}" + ("" if k is None else f" (retain {k:.0f})")
                              for v, s, k in zip(c["values"], c["scores"], kept, strict=True))
            chosen = f"{c['chosen']:.3g}" + ("" if c.get("bracketed", True) else
                                              " (calibration did not bracket the oracle)")
            lines.append([r["method"], str(r.get("forget", "-")), c["method"], c["param"],
                          chosen,
                          f"{c['goal']:.3g}{unit}", tried])
    if not lines:
        return []
    return [Block("h3", "Calibration"),
            Block("p", "`calibrate: oracle`: each method's declared strength, chosen on the "
                       "first seed from its grid, run at the full budget, to match the oracle "
                       "on the leakable forget ids (never the held-out split) or to reach the "
                       "oracle's distance from θ_pre, among candidates whose retain accuracy "
                       f"stays within {UTILITY_MARGIN:g} points of the oracle's; the same "
                       "value runs on every seed."),
            Block("table", table=Table(["method", "forget set", "stage", "strength", "chosen",
                                        "oracle", "candidates → reached"], lines))]


def _blocks(rows: list[dict], title: str, figs: dict[str, Path]) -> list[Block]:
    found = main_verdicts(rows)
    setting = main_setting(rows)
    at = ("" if setting is None else
          f" Main attack setting: lr {setting[0]:g}, {setting[1]} steps.")
    failed = failed_frame(rows)
    blocks = [
        Block("h1", title),
        Block("p", _describe(rows)),
        Block("p", verdict_text(found)),
        Block("h2", "Verdicts"),
        Block("p", "Each method against the retrain oracle in the same cell (seed, forget "
                   "set, k, relearn set, attack), retain relearn set, every attack setting. "
                   "*gap*: forget accuracy after unlearning minus the oracle's. *excess "
                   "(end)*: the mean of the last 12.8% of the attack curve's points (as the "
                   "seed paper averages its last 50), minus the oracle's; mean ± std over "
                   "seeds and a paired 95% t-interval. *r*: (end − after unlearning) − the "
                   "oracle's same, seed by seed, what the attack added beyond the gap. "
                   "*share back*: excess / (100 − the oracle's end). *test − oracle*: the "
                   "utility cost. *distance / oracle's*: L2 from the original over the "
                   "oracle's. *seeds relearning*: seeds whose own excess reaches the bar with "
                   "r > 0. " + RULES),
        Block("table", table=verdict_table(found)),
        *_calibration_blocks(rows),
        Block("h2", "Methods"),
        Block("p", "Accuracies in %; *forget* is the held-out forget split. From ok cells "
                   "relearning on the retain set at the main attack setting; mean ± std over "
                   "seeds. *forget after attack (end)* is the mean of the attack curve's last "
                   "12.8% of points, and *excess* that minus the oracle's. ToW = "
                   "retain × (1 − forget) × test. L2 distances over weights and biases. The "
                   "barrier is the retain-loss barrier on the straight line from the original "
                   "to the model. MIA AUC: SVC membership inference of the held-out forget split "
                   "against unseen test images, read as the note below the table says. "
                   "AURC: mean recovery in points over log attack steps." + at),
        Block("table", table=paper_display(paper_table(rows))),
        Block("p", mia_note(rows)),
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
        *membership_blocks(rows, figs.get("lira")),
        Block("h2", "All settings"),
        Block("p", "Mean over seeds per method, relearn set, attack setting and k. "
                   "*recovery (own start)* = best held-out forget accuracy during the attack "
                   "minus the method's own forget accuracy after unlearning (points); it "
                   "classifies nothing, since over-forgetting inflates it."),
        Block("table", table=summary_table(summary_frame(rows))),
        Block("h2", "Failed cells"),
    ]
    if failed.empty:
        blocks.append(Block("p", "None."))
    else:
        blocks.append(Block("table", table=failed_display(failed)))
    return blocks


def _with_verdicts(rows: list[dict]) -> list[dict]:
    """Each ok row with its (method, cell)'s verdict, so results.csv carries the column."""
    found = {tuple(getattr(v, k) for k in GROUP): v.verdict for v in verdicts(rows)}
    return [{**r, "verdict": found.get(tuple(r.get(k) for k in GROUP))} for r in rows]


def write_relearn_report(rows: list[dict], out: Path, title: str = "Relearning study") -> dict:
    """``results.csv``, ``report.md``, ``recovery.png`` (plus ``recovery-<set>.png`` per
    other relearn set), ``scatter.png``, ``lmc.png``, ``lira.png`` (a study with per-example
    membership inference) and the self-contained ``report.html``
    in ``out``; returns their paths by kind."""
    if not rows:
        raise ValueError("no results rows to report")
    out = Path(out)
    rows = _with_verdicts(paired(rows))
    styles = method_styles(method_order(rows))
    paths: dict[str, Path] = {"csv": out / "results.csv", "md": out / "report.md",
                              "html": out / "report.html"}
    write_csv(rows, paths["csv"])
    figs = {"png": recovery_figure(rows, out / "recovery.png", styles=styles)}
    figs.update({f"recovery-{s}": p for s, p in other_recovery_figures(rows, out, styles).items()})
    figs["scatter"] = scatter_figure(rows, out / "scatter.png", styles)
    figs["lmc"] = lmc_figure(rows, out / "lmc.png", styles)
    lira = lira_figure(rows, out / "lira.png", styles)
    if lira is not None:
        figs["lira"] = lira
    blocks = _blocks(rows, title, figs)
    atomic_write_text(paths["md"], to_markdown(blocks))
    atomic_write_text(paths["html"], to_html(blocks, title))
    return {**paths, **figs}
