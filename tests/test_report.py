"""The relearning report on synthetic rows: the numbers in its tables are the hand-computed
means, failed cells are listed and left out of the means, the HTML page is self-contained,
and rows from older runs still report."""

from __future__ import annotations

import base64
import math
import os
import re
import stat
from pathlib import Path

import matplotlib
import pytest

from dormant.report import (
    failed_frame,
    main_verdicts,
    paper_table,
    summary_frame,
    write_relearn_report,
)
from dormant.report.figures import lmc_means
from dormant.report.tables import main_setting, paper_display

MAIN = dict(attack_lr=1e-5, attack_steps=100)
STEPS = [10, 20, 50, 100]
# per method: forget after unlearning, forget at the best attack point (k=0, k=5), for seed 0;
# seed 1 adds 10 to forget after unlearning and 4 to the attacked values
BASE = {"original": (100.0, 100.0, 100.0), "retrain": (50.0, 52.0, 60.0),
        "scrub": (40.0, 90.0, 96.0), "cbft": (45.0, 55.0, 70.0)}
NEW_KEYS = ("status", "error", "relearn_set", "attack_lr", "attack_steps", "aurc",
            "l2_to_oracle", "barrier", "mia_auc", "mia_auc_attacked", "mia_loss_auc",
            "mia_loss_auc_attacked", "lmc")


def make_row(method: str, seed: int, k: int, relearn_set: str = "retain", attack=MAIN,
             **over) -> dict:
    forget, best0, best5 = BASE[method]
    forget += 10 * seed
    best = (best0 if k == 0 else best5) + 4 * seed
    ref = method == "original"
    row = {
        "dataset": "digits", "model": "mlp", "forget": "class:1:atypical:0.3",
        "method": method, "seed": seed, "k": k, "retain_acc": 99.0 - seed, "forget_acc": forget,
        "test_acc": 95.0 + seed, "tow": 99.0 * (100 - forget) * 95.0 / 1e4,
        "retain_acc_attacked": 99.5, "test_acc_attacked": 96.0 - seed,
        "forget_acc_attacked": best, "forget_acc_attacked_last": best - 2,
        "recovery": best - forget, "train_fit_acc": 100.0, "l2_to_original": 0.0 if ref
        else 1.0 + seed, "forget_size": 44, "heldout_size": 35, "split": "abc",
        "hparams": {}, "attack": {"steps": attack["attack_steps"], "lr": attack["attack_lr"],
                                  "eval_every": 10},
        "curve_steps": STEPS, "curve_forget_acc": [forget + (best - forget) * i / 3
                                                   for i in range(4)],
        "attack_seconds": 1.0, "cell": f"{method}-{seed}-{k}-{relearn_set}",
        "unlearn_seconds": 2.0, "seconds": 3.0,
        "status": "ok", "relearn_set": relearn_set, **attack,
        "aurc": (best - forget) / 2, "l2_to_oracle": 3.0 + seed, "barrier": None if ref
        else 0.1 * (seed + 1), "mia_auc": 0.6 + 0.1 * seed, "mia_auc_attacked": 0.7 + 0.1 * seed,
        "mia_loss_auc": 0.55, "mia_loss_auc_attacked": 0.65,
        "lmc": None if ref else {
            "t": [0.0, 0.5, 1.0], "retain_loss": [0.1, 0.5 + seed, 0.2],
            "retain_acc": [99.0, 80.0, 98.0], "forget_loss": [0.1, 2.0, 3.0],
            "forget_acc": [100.0, 50.0, forget], "test_loss": [0.2, 0.6, 0.3],
            "test_acc": [95.0, 70.0, 94.0]},
    }
    row.update(over)
    return row


def failed_row(method: str, seed: int, k: int, error: str, relearn_set: str = "retain",
               **extra) -> dict:
    return {"dataset": "digits", "model": "mlp", "forget": "class:1:atypical:0.3",
            "method": method, "seed": seed, "k": k, "relearn_set": relearn_set, **MAIN,
            "status": "failed", "error": error, "cell": f"{method}-{seed}-{k}-fail",
            "hparams": {}, **extra}


@pytest.fixture
def rows() -> list[dict]:
    out = [make_row(m, s, k) for s in (0, 1) for m in BASE for k in (0, 5)]
    # another relearn set and another attack setting: both must stay out of the paper table
    out += [make_row(m, s, 5, "test", forget_acc_attacked=11.0) for s in (0, 1) for m in BASE]
    out += [make_row("scrub", 0, 0, attack=dict(attack_lr=1e-3, attack_steps=20),
                     forget_acc_attacked=1.0, forget_acc=1.0)]
    # a failed cell (carrying a stray number that must not leak into any mean) and a method
    # that failed everywhere
    out.append(failed_row("scrub", 2, 0, "Diverged: loss became nan at step 17",
                          forget_acc=999.0))
    out += [failed_row("tar", s, k, "CUDA out of memory") for s in (0, 1) for k in (0, 5)]
    return out


def _line(df, method) -> dict:
    return df.set_index("method").loc[method].to_dict()


def test_main_setting_is_the_most_common(rows):
    assert main_setting(rows) == (1e-5, 100)


def test_paper_table_numbers_are_the_hand_computed_means(rows):
    df = paper_table(rows)
    assert list(df["method"]) == ["original", "retrain", "scrub", "cbft", "tar"]
    scrub = _line(df, "scrub")
    assert scrub["n"] == 2
    assert scrub["forget"] == pytest.approx((40 + 50) / 2)
    assert scrub["forget_std"] == pytest.approx(math.sqrt(50))  # sample std of 40, 50
    # the end of the attack: the mean of the curve's last 3 of 4 points, forget + 2/3 of
    # the way to the best point: 40 + 50 * 2/3 and 50 + 44 * 2/3
    assert scrub["forget_k0"] == pytest.approx((73 + 1 / 3 + 79 + 1 / 3) / 2)
    assert scrub["forget_k5"] == pytest.approx((40 + 56 * 2 / 3 + 50 + 50 * 2 / 3) / 2)
    # minus the oracle's end in the same seed: 50 + 2 * 2/3 and 60 - 4 * 2/3
    assert scrub["excess_k0"] == pytest.approx(22.0)
    assert scrub["excess_k0_std"] == pytest.approx(0.0)
    assert _line(df, "retrain")["excess_k0"] == 0.0
    assert scrub["test"] == pytest.approx(95.5)
    assert scrub["l2_to_oracle"] == pytest.approx(3.5)
    assert scrub["barrier"] == pytest.approx(0.15)
    assert scrub["mia_auc"] == pytest.approx(0.65)
    assert scrub["mia_auc_attacked"] == pytest.approx(0.75)
    # AURC at k = 0 only: (90 - 40)/2 and (94 - 50)/2
    assert scrub["aurc_k0"] == pytest.approx((25 + 22) / 2)
    assert math.isnan(_line(df, "original")["barrier"])
    tar = _line(df, "tar")
    assert tar["n"] == 0 and math.isnan(tar["forget"])


def test_paper_markdown_shows_mean_and_std(rows):
    table = paper_display(paper_table(rows))
    line = dict(zip(table.headers, next(r for r in table.rows if r[0] == "scrub"),
                    strict=True))
    assert line["forget"] == "45.0 ± 7.1"
    assert line["forget after attack k=0 (end)"] == "76.3 ± 4.2"
    assert line["excess k=0"] == "+22.0 ± 0.0"
    assert line["L2 to oracle"] == "3.500 ± 0.707"
    tar = next(r for r in table.rows if r[0] == "tar")
    assert tar[1] == "0" and set(tar[2:]) == {"-"}


def test_failed_cells_are_listed_and_left_out_of_the_means(rows):
    failed = failed_frame(rows)
    assert list(failed.columns) == ["method", "seed", "k", "relearn_set", "error"]
    assert len(failed) == 5
    first = failed.iloc[0].to_dict()
    assert first == {"method": "scrub", "seed": 2, "k": 0, "relearn_set": "retain",
                     "error": "Diverged: loss became nan at step 17"}
    s = summary_frame(rows)
    assert "tar" not in set(s["method"])
    scrub0 = s[(s["method"] == "scrub") & (s["k"] == 0) & (s["relearn_set"] == "retain")
               & (s["attack_lr"] == 1e-5)]
    assert list(scrub0["n"]) == [2] and scrub0["forget_acc"].iloc[0] == pytest.approx(45)


def test_summary_groups_by_relearn_set_and_attack_setting(rows):
    s = summary_frame(rows)
    for col in ("retain_acc", "test_acc", "forget_acc", "forget_acc_attacked",
                "forget_acc_attacked_last", "recovery", "l2_to_original", "n", "aurc",
                "mia_auc", "barrier"):
        assert col in s.columns
    assert len(s) == 4 * 2 + 4 + 1  # retain (4 methods x 2 k), test (4 x k=5), other lr
    test_set = s[s["relearn_set"] == "test"]
    assert set(test_set["forget_acc_attacked"]) == {11.0}
    other = s[s["attack_lr"] == 1e-3]
    assert list(other["method"]) == ["scrub"] and list(other["n"]) == [1]
    assert list(s["relearn_set"]) == ["retain"] * 9 + ["test"] * 4
    assert list(s["k"][:9]) == [0] * 4 + [5] * 4 + [0]
    assert list(s["method"][:4]) == ["original", "retrain", "scrub", "cbft"]


def test_verdicts_read_only_retain_rows_at_the_main_setting(rows):
    found = {(v.method, v.k): v for v in main_verdicts(rows)}
    # the stray lr 1e-3 scrub row (forget 1.0) and the test relearn set stay out
    assert {v.attack_lr for v in found.values()} == {1e-5}
    assert {v.relearn_set for v in found.values()} == {"retain"}
    assert found["scrub", 0].verdict == "relearns" and found["scrub", 0].excess == 22.0
    assert found["scrub", 0].forget_gap == -10.0
    # cbft ends 1/3 point above the oracle: it resists
    assert found["cbft", 0].verdict == "resists"
    assert found["cbft", 0].excess == pytest.approx(1 / 3, abs=1e-3)
    assert found["original", 0].verdict == "does-not-forget"
    assert found["retrain", 0].verdict == "resists" and found["retrain", 0].excess == 0.0
    assert "tar" not in {m for m, _ in found}  # it failed everywhere: no verdict


def test_lmc_means_average_seeds_elementwise(rows):
    means = lmc_means(rows)
    assert set(means) == {"retrain", "scrub", "cbft"}  # the original has no path
    assert list(means["scrub"]["retain_loss"]) == pytest.approx([0.1, 1.0, 0.2])
    assert list(means["scrub"]["forget_acc"]) == pytest.approx([100.0, 50.0, 45.0])


def _embedded_pngs(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([^"]+)"',
                                                    page)]


def test_report_files_and_self_contained_html(rows, tmp_path):
    assert matplotlib.get_backend().lower() == "agg"
    paths = write_relearn_report(rows, tmp_path, "Synthetic study")
    for key in ("csv", "md", "html", "png", "scatter", "lmc", "recovery-test"):
        assert paths[key].is_file() and paths[key].stat().st_size > 0, key
    page = paths["html"].read_text()
    refs = re.findall(r'(?:src|href)\s*=\s*["\']?([^"\'\s>]+)', page)
    assert refs and all(r.startswith("data:image/png;base64,") for r in refs)
    assert "<link" not in page and "<script" not in page and "@import" not in page
    pngs = _embedded_pngs(page)
    assert len(pngs) == 4  # recovery, recovery on test, scatter, lmc
    assert all(p.startswith(b"\x89PNG\r\n\x1a\n") for p in pngs)
    assert pngs[0] == paths["png"].read_bytes()
    assert "Diverged: loss became nan at step 17" in page and "<table>" in page
    assert "45.0 ± 7.1" in page
    assert "relearns: scrub (+22.0)" in page and "| scrub | 0 | 100 | 2 | -10.0 | +22.0" in \
        paths["md"].read_text()
    md = paths["md"].read_text()
    for name in ("recovery.png", "scatter.png", "lmc.png", "recovery-test.png"):
        assert f"]({name})" in md
    assert "CUDA out of memory" in md and "45.0 ± 7.1" in md
    # how to read an MIA AUC far below 0.5, with this study's own reference values
    ok = [r for r in rows if r["status"] == "ok"]
    original, oracle = ([r["mia_auc"] for r in ok if r["method"] == m] for m in
                        ("original", "retrain"))
    for text in (md, page):
        assert "Reading MIA AUC" in text and "do not read 1 − AUC as memory" in text
        assert (f"Here the original scores {sum(original) / len(original):.3f} and the oracle "
                f"{sum(oracle) / len(oracle):.3f}") in text
    csv_lines = paths["csv"].read_text().strip().splitlines()
    assert len(csv_lines) == len(rows) + 1 and "status" in csv_lines[0]
    # one mode for every file of the report, the one open() gives (0644 under umask 022)
    umask = os.umask(0o022)
    os.umask(umask)
    modes = {key: stat.S_IMODE(p.stat().st_mode) for key, p in paths.items()}
    assert set(modes.values()) == {0o666 & ~umask}, modes


def test_old_format_rows_still_report(rows, tmp_path):
    old = [{k: v for k, v in r.items() if k not in NEW_KEYS} for r in rows
           if r["status"] == "ok"]
    df = paper_table(old)
    scrub = _line(df, "scrub")
    # without attack_lr/steps the setting comes from row["attack"], which keeps the forget
    # acc 1.0 row at lr 1e-3 out; without relearn_set every row counts as retain
    assert scrub["forget"] == pytest.approx(45) and math.isnan(scrub["mia_auc"])
    paths = write_relearn_report(old, tmp_path, "Old study")
    page = paths["html"].read_text()
    assert len(_embedded_pngs(page)) == 3  # only one relearn set now
    assert "None." in paths["md"].read_text()  # no failed cells


def test_only_k0_and_a_method_that_always_failed(rows, tmp_path):
    k0 = [r for r in rows if r["k"] == 0 and r.get("relearn_set") == "retain"]
    df = paper_table(k0)
    assert "forget_k5" not in df and "excess_k5" not in df  # no column for a k not run
    assert _line(df, "scrub")["forget_k0"] == pytest.approx(76 + 1 / 3)
    paths = write_relearn_report(k0, tmp_path)
    md = paths["md"].read_text()
    assert "| tar | 0 | - |" in md
    assert "CUDA out of memory" in md


def test_every_cell_failed(tmp_path):
    rows = [failed_row("scrub", 0, 0, "boom"), failed_row("retrain", 0, 0, "bang")]
    paths = write_relearn_report(rows, tmp_path)
    assert main_verdicts(rows) == []
    page = paths["html"].read_text()
    assert "boom" in page and "bang" in page
    assert len(_embedded_pngs(page)) == 3  # placeholders saying there is nothing to plot


def test_paper_table_follows_the_study_k_values(rows, tmp_path):
    """A study run at k = 0 and 2 gets k = 2 columns (not the paper's fixed k = 5), with the
    same numbers the k = 5 columns had before the relabelling."""
    before = _line(paper_table(rows), "scrub")
    k2 = [{**r, "k": 2} if r.get("k") == 5 else r for r in rows]
    df = paper_table(k2)
    assert "forget_k5" not in df
    scrub = _line(df, "scrub")
    assert scrub["forget_k2"] == pytest.approx(before["forget_k5"])
    assert scrub["excess_k2"] == pytest.approx(before["excess_k5"])
    assert scrub["forget_k0"] == pytest.approx(before["forget_k0"])
    table = paper_display(df)
    assert "forget after attack k=2 (end)" in table.headers and "excess k=2" in table.headers
    assert not any("k=5" in h for h in table.headers)
    line = dict(zip(table.headers, next(r for r in table.rows if r[0] == "scrub"),
                    strict=True))
    assert line["excess k=2"].startswith(("+", "-"))  # signed like every excess
    md = write_relearn_report(k2, tmp_path)["md"].read_text()
    assert "excess k=2" in md and "k=5" not in md


def test_an_original_short_of_fit_target_is_said_in_one_line_and_in_the_report(rows, tmp_path):
    """Found on data the project had never used: the original stopped at its step cap fitting
    88.9% of its training set, below the 99% fit_target, and nothing said so."""
    from dormant.experiments.relearn import fit_note

    short = [{**r, "train_fit_acc": 88.9, "fit_target": 99.0, "train_steps": 1880}
             for r in rows]
    note = fit_note(short[0])
    assert note == (f"note: seed {short[0]['seed']}'s original fits 88.9% of its training set, "
                    "below fit_target 99%: it stopped at its step cap (1880 steps); raise "
                    "train_steps for a memorising original")
    assert fit_note({**short[0], "train_fit_acc": 99.2}) is None
    assert fit_note({**short[0], "fit_target": None}) is None
    md = write_relearn_report(short, tmp_path, "Short fit")["md"].read_text()
    assert "original fits 88.9% of its training set, below fit_target 99%" in md


# --- how the report reads: labels apart, tables inside the page ---------------------------------


def _crowded_rows() -> list[dict]:
    """Ten methods at nearly the same accuracies after the attack (two exactly on the
    original's point, as a method that did nothing lands), at the right edge of the data."""
    spots = [(96.5, 91.4), (96.5, 91.4), (96.5, 91.4), (96.49, 87.6), (96.4, 90.0),
             (95.3, 30.5), (94.9, 35.3), (96.45, 89.0), (96.5, 88.0), (95.0, 34.0)]
    names = ["original", "gradient_ascent", "noop", "neggrad_plus", "scrub", "retrain",
             "finetune", "salun", "l1_sparse", "ssd"]
    return [{**make_row("scrub", 0, 0), "method": name, "test_acc_attacked": x,
             "forget_acc_attacked_last": y}
            for name, (x, y) in zip(names, spots, strict=True)]


def test_scatter_labels_do_not_overlap_each_other_or_a_marker():
    """The demo's scatter put "original" and "gradient_ascent" on top of each other: every
    label's box, in pixels as drawn, now overlaps no other label and no point."""
    import matplotlib.pyplot as plt
    from matplotlib.text import Annotation, Text

    from dormant.report.figures import _MARKER_PX, scatter_plot

    fig = scatter_plot(_crowded_rows())
    ax = fig.axes[0]
    fig.canvas.draw()  # an annotation finds its place in pixels when drawn
    renderer = fig.canvas.get_renderer()
    labels = [c for c in ax.get_children() if isinstance(c, Annotation)]
    assert sorted(t.get_text() for t in labels) == sorted(r["method"] for r in _crowded_rows())
    boxes = [Text.get_window_extent(t, renderer) for t in labels]  # the text, not its line
    points = [ax.transData.transform(t.xy) for t in labels]
    plt.close(fig)
    for i, a in enumerate(boxes):
        for j, b in enumerate(boxes[i + 1:], i + 1):
            assert not a.overlaps(b), (labels[i].get_text(), labels[j].get_text())
        for px, py in points:
            inside_x = a.x0 < px + _MARKER_PX and a.x1 > px - _MARKER_PX
            inside_y = a.y0 < py + _MARKER_PX and a.y1 > py - _MARKER_PX
            assert not (inside_x and inside_y), labels[i].get_text()


@pytest.mark.slow  # a browser: about 3 s alone, 20 s on a loaded machine
def test_no_table_is_cut_at_1400_px(rows, tmp_path, chromium):
    """In a 1400 px window the page itself never scrolls sideways: every table sits in a box
    that scrolls on its own, so a table too wide for the page stays whole, and only the
    all-settings dump (26 metric columns) needs it: the verdicts, the calibration, the
    methods and the failed cells (with a long error) fit."""
    from playwright.sync_api import sync_playwright

    values = [1e-4 * 3 ** i for i in range(7)]  # a grid extended three times, as the demo's
    cal = [{"stage": 0, "method": "scrub", "param": "lr", "target": "leakable", "goal": 44.4,
            "values": values, "scores": [66.7, 77.8, 88.9, 88.9, 88.9, 66.7, 33.3],
            "retain": [100.0] * 6 + [99.0], "chosen": values[-1], "bracketed": True}]
    wide = [{**r, "calibration": cal} if r["method"] == "scrub" else r for r in rows]
    wide.append(failed_row("cbft", 3, 0, "RuntimeError: " + "a long message " * 20))
    page_path = write_relearn_report(wide, tmp_path, "Layout")["html"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto(page_path.as_uri())
        found = page.evaluate("""() => ({
            page: [document.documentElement.scrollWidth, document.documentElement.clientWidth],
            tables: [...document.querySelectorAll('table')].map(t => ({
                wrapped: t.parentElement.classList.contains('scroll') &&
                         getComputedStyle(t.parentElement).overflowX === 'auto',
                table: t.scrollWidth, box: t.parentElement.clientWidth,
                section: (() => { let e = t.parentElement.previousElementSibling;
                                  while (e && !/^H[1-3]$/.test(e.tagName))
                                      e = e.previousElementSibling;
                                  return e ? e.textContent : null; })()}))})""")
        # kept for a person to look at (runs/ is not committed)
        shots = Path(__file__).resolve().parents[1] / "runs" / "test-artifacts" / "report"
        shots.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=shots / "report-1400px.png", full_page=True)
        browser.close()
    assert found["page"][0] <= found["page"][1], found["page"]
    sections = [t["section"] for t in found["tables"]]
    assert sections == ["Verdicts", "Calibration", "Methods", "All settings", "Failed cells"]
    for t in found["tables"]:
        assert t["wrapped"], t
        assert t["table"] <= t["box"] or t["section"] == "All settings", t
