"""What a new user meets first: the files a run writes can be read and shared like any other
file, and the demo's console output fits one screen."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import pytest

from dormant.store import files
from dormant.store.files import atomic_write_text


@pytest.fixture
def umask():
    """Sets the process umask for one test (the writer caches it) and puts it back."""
    old = os.umask(0o022)
    os.umask(old)

    def set_(mask: int) -> None:
        os.umask(mask)
        files._umask.cache_clear()

    yield set_
    os.umask(old)
    files._umask.cache_clear()


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_an_atomic_write_gets_the_mode_open_gives(tmp_path, umask):
    """mkstemp's 0600 made report.html owner-only beside 0644 figures: a new file now gets
    0666 less the umask, like open(); a file that exists keeps its mode."""
    umask(0o022)
    atomic_write_text(tmp_path / "report.html", "<p>hi</p>")
    with open(tmp_path / "figure.png", "w") as f:
        f.write("png")
    assert _mode(tmp_path / "report.html") == _mode(tmp_path / "figure.png") == 0o644
    umask(0o077)  # a user who keeps everything private gets that too
    atomic_write_text(tmp_path / "private.md", "x")
    assert _mode(tmp_path / "private.md") == 0o600
    umask(0o022)
    (tmp_path / "locked.json").write_text("{}")
    os.chmod(tmp_path / "locked.json", 0o640)
    atomic_write_text(tmp_path / "locked.json", "{}\n")  # rewritten: the user's mode stays
    assert _mode(tmp_path / "locked.json") == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "figure.png", "locked.json", "private.md", "report.html"]  # no temporary left


STUDY = """dataset: mnist
train_size: 600
test_size: 200
model: mlp
forget: class:3
seeds: [0, 1]
k: [0, 5]
methods: [finetune, gradient_ascent]
calibrate: none
"""


def test_plan_on_a_known_dataset_needs_no_data(tmp_path, monkeypatch, capsys):
    """`dormant plan` trains nothing, so MNIST absent from disk is planned from its published
    sizes, said in one line; nothing is downloaded."""
    from dormant.cli import main

    cache = tmp_path / "cache"
    monkeypatch.setenv("DORMANT_CACHE", str(cache))
    study = tmp_path / "study.yaml"
    study.write_text(STUDY)
    capsys.readouterr()
    rc = main(["plan", str(study), "--step-seconds", "0.01", "--workers", "1,2"])
    out = capsys.readouterr().out
    assert rc == 0, out
    note = out.splitlines()[0]
    assert note.startswith("note: dataset 'mnist' not found under ") and note.endswith(
        "This plan counts and times from mnist's published sizes instead (600 training and "
        "200 test images of 1x28x28); the run itself needs the data"), note
    # 2 seeds x 2 k x (original, retrain, finetune, gradient_ascent)
    assert "study.yaml: 16 cells" in " ".join(out.split())
    assert not [p for p in cache.rglob("*") if p.is_file()]  # nothing fetched, nothing cached


def test_the_stand_in_plans_what_the_real_data_plans(shared_datasets, tmp_path):
    """Where MNIST is on disk: the same label counts per class, in the full set and in a
    study's stratified subset, so the same cells and artefacts."""
    import torch

    from dormant.cli_common import load_spec
    from dormant.data import load_dataset
    from dormant.data.dataset import stratified_subset
    from dormant.data.known_sizes import stand_in
    from dormant.experiments import RelearnSpec
    from dormant.experiments.plan import Costs, plan

    real = load_dataset("mnist", root=shared_datasets, cache_dir=tmp_path)
    full = stand_in("mnist")
    for split in ("y_train", "y_test"):
        assert torch.equal(torch.bincount(getattr(real, split)),
                           torch.bincount(getattr(full, split)))
    assert real.image_shape == full.image_shape
    (tmp_path / "study.yaml").write_text(STUDY)
    spec = load_spec(RelearnSpec, tmp_path / "study.yaml")
    got = {}
    for name, ds in (("real", stratified_subset(real, 600, 0, 200)),
                     ("stand-in", stand_in("mnist", 600, 200))):
        costs = Costs("given", 0.01, 1.0, {"finetune": 1.0, "gradient_ascent": 1.0}, 1.0, 1.0)
        p = plan(spec, ds, costs, [1, 2])
        got[name] = (p.cells, p.artefacts, p.makespan)
    assert got["real"] == got["stand-in"]


# --- the demo's console ---------------------------------------------------------------------------

DEMO = ("original", "retrain", "finetune", "gradient_ascent", "neggrad_plus")
GRID = [1e-4 * 3 ** i for i in range(7)]  # a grid extended three times, as the demo's finetune


def _demo_rows() -> list[dict]:
    from test_report import make_row

    rows = []
    for k in (0, 5):
        for seed in (0, 1, 2):
            for m in DEMO:
                cal = [] if m in ("original", "retrain") else [{
                    "stage": 0, "method": m, "param": "lr", "target": "leakable",
                    "goal": 44.4444, "values": GRID,
                    "scores": [66.7, 77.8, 88.9, 88.9, 88.9, 66.7, 33.3],
                    "retain": [100.0] * 7, "chosen": GRID[-1], "bracketed": True}]
                row = make_row("scrub", seed, k)
                rows.append({**row, "method": m, "calibration": cal,
                             "forget_acc_attacked_end": row["forget_acc_attacked_last"],
                             "hparams": {"lr": GRID[-1], "steps": 1500} if cal else {},
                             "cell": f"{m}-{seed}-{k}", "train_steps": 324,
                             "fit_target": 99.0})
    return rows


def _replay(rows: list[dict]):
    """run_relearn as the demo calls it, replaying ``rows``: each cell reports a 1,500-step
    unlearning run and an attack through ``progress``, as the engine does."""

    def run_relearn(spec, out, progress=None, executor=None, on_row=None):
        progress("cells", 0, len(rows))
        for i, r in enumerate(rows, 1):
            for step in range(0, 1501, 15):
                progress(r["method"], step, 1500)
            for step in range(0, 151, 5):
                progress("attack", step, 150)
            on_row(r)
            progress("cells", i, len(rows))
        return rows

    return run_relearn


def test_the_demo_output_fits_one_screen(tmp_path, monkeypatch, capsys):
    """The demo printed about 210 lines piped (each training run's tenths, one line per cell,
    unlabelled numbers). Now, at 100 columns: the plan, one labelled line per calibrated
    method, a few cells lines, one summary line, the table, the verdict and the page to open,
    all within 40 rows of the screen; no run's own progress line."""
    import math

    import dormant.experiments
    import dormant.report
    from dormant.cli import main
    from dormant.cli_common import console

    monkeypatch.setattr(dormant.experiments, "run_relearn", _replay(_demo_rows()))
    out = tmp_path / "demo"
    names = {"csv": "results.csv", "md": "report.md", "html": "report.html",
             "png": "recovery.png", "scatter": "scatter.png", "lmc": "lmc.png"}
    # the figures cost seconds and say nothing here: test_report.py draws them
    monkeypatch.setattr(dormant.report, "write_relearn_report",
                        lambda rows, out, title: {k: out / n for k, n in names.items()})
    monkeypatch.setattr(console, "width", 100)
    capsys.readouterr()
    rc = main(["demo", "--out", str(out), "--device", "cpu"])
    lines = capsys.readouterr().out.splitlines()
    assert rc == 0, "\n".join(lines)
    rows_on_screen = sum(max(1, math.ceil(len(ln) / 100)) for ln in lines)
    assert rows_on_screen <= 40, "\n".join(lines)
    assert lines[0].startswith("30 cells to run (0 already done, 30 in all)")
    cal = [ln for ln in lines if ln.startswith("calibrated ")]
    assert [ln.split(":")[0] for ln in cal] == [
        "calibrated finetune", "calibrated gradient_ascent", "calibrated neggrad_plus"]
    text = " ".join(" ".join(lines).split())  # prose wraps between words at 100 columns
    assert ("calibrated finetune: lr 0.0729, leakable forget acc 33.3% (oracle 44.4%); also "
            "tried lr 0.0001: 66.7%, 0.0003: 77.8%, 0.0009: 88.9%, 0.0027: 88.9%, 0.0081: "
            "88.9%, 0.0243: 66.7%") in text
    assert max(map(len, lines[1:])) <= 100  # the plan line (a path inside) aside
    cells = [ln for ln in lines if ln.startswith("cells: ")]
    assert 2 <= len(cells) <= 12 and cells[-1].startswith("cells: 30/30 (100%)")
    assert not [ln for ln in lines if re.match(r"(original|retrain|finetune|gradient_ascent|"
                                               r"neggrad_plus|attack): [\d,]+/", ln)]
    assert any(ln.startswith("30 cells in ") and ln.endswith(": 30 ok, 0 failed")
               for ln in lines)
    assert text.endswith("; beside it results.csv, report.md, results.jsonl and 3 figures")
    assert f"wrote {out / 'report.html'} in " in text


def test_a_study_logs_its_cells_not_each_training_run():
    """Off a terminal a study logs the cells task only: its start, a tenth no sooner than a
    minute after the last line, a beat naming the run in progress after a minute or a tenth
    of the time so far, and its end; on a terminal the last cell shows under the bars and is
    replaced."""
    import io

    from rich.console import Console

    from dormant.cli_progress import ProgressBars

    buf, now = io.StringIO(), [0.0]
    with ProgressBars(Console(file=buf, width=200), clock_fn=lambda: now[0], study=True) as bars:
        bars("cells", 0, 30)
        for cell in range(1, 31):
            for step in range(0, 1501, 150):
                bars("finetune", step, 1500)
            now[0] += 10.0  # a cell every 10 s: a 5-minute study
            bars("cells", cell, 30)
        now[0] = 300.0
        bars("finetune", 600, 1500)
        now[0] = 331.0
        bars.beat_once()  # the cells task has ended: no beat
    lines = buf.getvalue().splitlines()
    assert not [ln for ln in lines if ln.startswith("finetune")]
    assert lines[0] == "cells: 0/30 (0%) in 0 s"
    # tenths at 3, 6, ... cells, each a minute after the last line: 6 cells apart
    assert [ln.split()[1] for ln in lines[1:-1]] == [f"{n}/30" for n in range(6, 30, 6)]
    assert lines[-1] == "cells: 30/30 (100%) in 5 min 00 s"
    assert bars.beat is not None and not bars.beat.is_alive()

    buf, now = io.StringIO(), [0.0]
    with ProgressBars(Console(file=buf, width=200), clock_fn=lambda: now[0], study=True) as bars:
        bars("cells", 2, 30)
        bars("finetune", 600, 1500)
        now[0] = 331.0
        bars.beat_once()  # 331 s since the last line, more than a minute: the beat
        now[0] = 390.0
        bars.beat_once()  # 59 s later: nothing yet
        now[0] = 2000.0
        bars.beat_once()  # 1,610 s later: the beat, a tenth of 2,000 s being 200 s
        now[0] = 2190.0
        bars.beat_once()  # 190 s later: nothing
    assert buf.getvalue().splitlines()[1:] == [
        "cells: 2/30 (7%) in 5 min 31 s, eta 1 h 17 min, still running (finetune 600/1,500)",
        "cells: 2/30 (7%) in 33 min 20 s, eta 7 h 46 min, still running (finetune 600/1,500)"]

    live = ProgressBars(Console(file=io.StringIO(), force_terminal=True, width=100), study=True)
    with live:
        live.status("last cell: finetune seed 0")
        live.status("last cell: finetune seed 1")
        assert str(live.bars.status) == "last cell: finetune seed 1"
        assert list(live.bars.get_renderables())[-1] is live.bars.status
