"""What a new user meets first: the files a run writes can be read and shared like any other
file, and the demo's console output fits one screen."""

from __future__ import annotations

import os
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
