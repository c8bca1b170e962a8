"""Shared fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# the offline copies of MNIST / CIFAR-10 that the project's machines keep beside the repo
SHARED_DATASETS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    """Path of ``../shared/datasets``; skips where absent, but fails under CI, which has it."""
    if SHARED_DATASETS.is_dir():
        return SHARED_DATASETS
    reason = f"offline datasets not found at {SHARED_DATASETS}"
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI must provide them")
    pytest.skip(reason)
