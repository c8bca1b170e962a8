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


@pytest.fixture(scope="session")
def digits(tmp_path_factory):
    from dormant.data import load_dataset

    return load_dataset("digits", cache_dir=tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def digits_setup(digits, tmp_path_factory):
    """The digits demo's original MLP, its atypical class-1 forget split and device tensors:
    trained once per session with the demo's own profile (about a second)."""
    from dormant.experiments.profiles import profile_for
    from dormant.experiments.relearn import prepare
    from dormant.experiments.spec import RelearnSpec
    from dormant.store import ModelCache

    spec = RelearnSpec(dataset="digits", device="cpu")
    cache = ModelCache(tmp_path_factory.mktemp("models"))
    prep = prepare(spec, digits, 0, cache, None)
    assert prep.profile == profile_for("digits", len(digits.y_train), digits.image_shape)
    return prep


@pytest.fixture(scope="session")
def cifar_jpeg_cache(tmp_path_factory):
    """One cache for the decoded CIFAR-10 JPEG export: decoding 60,000 JPEGs happens once."""
    return tmp_path_factory.mktemp("cifar-jpeg-cache")


@pytest.fixture(scope="session")
def digits_backdoor(digits):
    """Two digits MLPs fitted with one recipe: ``clean`` on the clean training set, ``badnets``
    with 16 images per source class carrying a 3x3 patch (amplitude 1) relabelled to class 0.
    ``trigger``, ``target`` and ``poisoned`` (the poisoned training set) come with them."""
    import torch

    from dormant.attacks import PoisonSpec, Trigger, poison
    from dormant.engine import Recipe, fit
    from dormant.models import ModelSpec, create_model

    trigger = Trigger("patch", size=3)
    p = poison(digits.x_train, digits.y_train, PoisonSpec(target=0, trigger=trigger,
                                                          per_class=16), 10, seed=0)
    recipe = Recipe(steps=600, lr=1e-3, augment="none", final_lr=1e-5)
    out = {"trigger": trigger, "target": 0, "poisoned": p}
    for name, (x, y) in {"clean": (digits.x_train, digits.y_train),
                         "badnets": (p.x, p.y)}.items():
        model = create_model(ModelSpec("mlp", 1, 10, 8), seed=0)
        fit(model, x, y, torch.arange(len(y)), recipe, generator=torch.Generator().manual_seed(0))
        out[name] = model
    return out


# hypothesis: a bounded, repeatable run in `make test`; `pytest -m fuzz` (`make test-fuzz`) runs
# 500 random examples per property; DORMANT_FUZZ_EXAMPLES=N overrides either count
def pytest_configure(config: pytest.Config) -> None:
    from hypothesis import settings

    settings.register_profile("bounded", max_examples=25, deadline=None, derandomize=True,
                              database=None, print_blob=True)
    settings.register_profile("fuzz", max_examples=500, deadline=None, database=None,
                              print_blob=True)
    fuzz = "fuzz" in (config.option.markexpr or "").replace("not fuzz", "")
    name = "fuzz" if fuzz or os.environ.get("HYPOTHESIS_PROFILE") == "fuzz" else "bounded"
    n = os.environ.get("DORMANT_FUZZ_EXAMPLES")
    if n:
        settings.register_profile(name, settings.get_profile(name), max_examples=int(n))
    settings.load_profile(name)


@pytest.fixture(scope="session")
def chromium() -> str:
    """The system Chromium (Debian's package; ``.ci/run`` installs it) for the browser tests:
    skipped where absent, but a failure under CI, which must have it."""
    import shutil

    path = os.environ.get("DORMANT_CHROMIUM") or shutil.which("chromium") or \
        shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("no chromium on PATH; CI must install it (apt-get install chromium)")
        pytest.skip("no chromium on PATH (apt-get install chromium)")
    return path
