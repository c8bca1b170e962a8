"""What the request tests share: an ids file, and the real CLI in a subprocess."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path


def write_ids(path: Path, ids) -> Path:
    """``ids`` as a text ids file, one per line."""
    path.write_text("\n".join(str(int(i)) for i in ids) + "\n")
    return path


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m dormant ARGS`` on one thread (a crash test kills it mid-way)."""
    return subprocess.run([sys.executable, "-m", "dormant", *args], capture_output=True,
                          text=True, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def trained_store(root: Path, name: str, policy: str, *train: str) -> dict:
    """A store under ``root`` holding a digits model trained by ``dormant train --store`` (with
    the extra ``train`` flags) as ``name`` v1, and a policy file of ``policy``."""
    from dormant.cli import main

    store = root / "store"
    assert main(["train", "--dataset", "digits", "--out", str(root / "train"), *train,
                 "--store", str(store), "--name", name, "--device", "cpu"]) == 0
    (root / "policy.yaml").write_text(policy)
    return {"root": root, "store": store, "policy": root / "policy.yaml"}


def copy_store(base: dict, tmp_path: Path) -> Path:
    """A private copy of ``base``'s store, so a test can tamper with it."""
    dest = tmp_path / "store"
    shutil.copytree(base["store"], dest)
    return dest


def refused_before_training(tmp_path: Path, monkeypatch, capsys, study: dict) -> str:
    """Run ``dormant backdoor`` on ``study`` (written as YAML, a private cache), assert that
    it stops with exit 2 before any model is trained, and return its one error line."""
    import yaml

    from dormant.cli import main

    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(study))
    monkeypatch.setenv("DORMANT_CACHE", str(tmp_path / "cache"))
    assert main(["backdoor", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    models = tmp_path / "cache" / "models"
    assert not models.exists() or not any(models.iterdir())
    assert len(err.splitlines()) == 1, err
    return err
