"""What every cell of one (seed, forget set) shares: the data on the device, the split, the
original model and the retrain oracle, both trained once and cached by content."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch
from torch import nn

from dormant.data import Dataset, load_dataset, stratified_subset
from dormant.data.dataset import stratified_ids
from dormant.data.forget import canary_labels, load_cscores, parse_forget, select_forget
from dormant.data.split import Split, make_split
from dormant.engine import Progress, Recipe, evaluate, fit, predict, resolve_device
from dormant.errors import DormantError
from dormant.experiments.profiles import Profile, profile_for
from dormant.experiments.spec import RelearnSpec
from dormant.models import ModelSpec, create_model
from dormant.store import ModelCache, cache_key
from dormant.unlearn import UnlearnContext, UnlearnData, unlearn


@dataclass
class Prepared:
    """Everything one seed of a study shares: data on the device, split, original, oracle."""

    dataset: Dataset
    profile: Profile
    spec: ModelSpec
    recipe: Recipe
    seed: int
    x: torch.Tensor
    y: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    split: Split
    original: nn.Module
    oracle: nn.Module
    train_fit_acc: float
    original_key: str
    forget_text: str = ""
    train_steps_taken: int = 0
    """Steps the original trained (it stops at ``fit_target``); the oracle trains as many."""
    oracle_key: str = ""

    def unlearn_data(self) -> UnlearnData:
        dev = self.x.device
        return UnlearnData(
            self.x, self.y, self.split.forget.to(dev), self.split.retain.to(dev),
            self.split.leakable.to(dev), self.dataset.num_classes,
        )

    def context(self, progress: Progress | None) -> UnlearnContext:
        return UnlearnContext(self.recipe, lambda s=None: create_model(
                                  self.spec, seed=self.seed if s is None else s),
                              self.seed, progress)

    @cached_property
    def oracle_monitor_acc(self) -> float:
        """The oracle's accuracy on the leakable forget ids: every method's stop target."""
        return evaluate(self.oracle, self.x, self.y, self.split.leakable.to(self.x.device)).acc


def load_study_data(spec, cache_dir: Path) -> Dataset:
    """The study's data: any spec with dataset, data_root, download, train_size, test_size."""
    ds = load_dataset(spec.dataset, root=spec.data_root, download=spec.download,
                      cache_dir=cache_dir)
    return stratified_subset(ds, spec.train_size, seed=0, n_test=spec.test_size)


def public_sample(spec, cache_dir: Path, size: int, seed: int
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``size`` seeded images (uint8, labels, ids into the full training split) of the
    dataset's training split that the study's subset (``load_study_data``) leaves out: a
    public sample of the same distribution, disjoint from the victim's training set. In a
    seeded random order, not by id: an image folder lists its images class by class, and
    every prefix of the sample (the attacker's held-out part, its surrogate's part) must
    hold every class."""
    ds = load_dataset(spec.dataset, root=spec.data_root, download=spec.download,
                      cache_dir=cache_dir)
    n = len(ds.y_train)
    inside = torch.zeros(n, dtype=torch.bool)
    if spec.train_size is None or spec.train_size >= n:
        inside[:] = True
    else:
        inside[stratified_ids(ds.y_train, spec.train_size, ds.num_classes, 0)] = True
    outside = torch.nonzero(~inside).flatten()
    if size > len(outside):
        raise DormantError(f"a public sample of {size} images asked, but only {len(outside)} "
                           f"of the {n} training images lie outside the victim's training set; "
                           "lower public or train_size")
    g = torch.Generator().manual_seed(seed + 31337)
    ids = outside[torch.randperm(len(outside), generator=g)[:size]]
    return ds.x_train[ids], ds.y_train[ids], ids


PATH_SCHEMES = ("imagefolder:", "npz:")


def absolute_paths(spec):
    """``spec`` with every file it names made absolute (``data_root``, ``cscores``, an
    ``imagefolder:``/``npz:`` dataset, ``ids:`` forget sets), so a worker started in another
    folder, or on another node of a cluster, reads the same files."""

    def absolute(text: str | None, schemes: tuple[str, ...] = ()) -> str | None:
        if text is None:
            return None
        for scheme in schemes:
            if text.startswith(scheme):
                return scheme + str(Path(text[len(scheme):]).expanduser().resolve())
        return text if schemes else str(Path(text).expanduser().resolve())

    fields = type(spec).model_fields
    changes = {"dataset": absolute(spec.dataset, PATH_SCHEMES)}
    for key in ("data_root", "cscores"):
        if key in fields:
            changes[key] = absolute(getattr(spec, key))
    if "forget" in fields and spec.forget:
        changes["forget"] = [absolute(f, ("ids:",)) for f in spec.forget]
    return spec.model_copy(update=changes)


def forget_sets(spec: RelearnSpec, profile: Profile) -> list[str]:
    return list(spec.forget) if spec.forget else [profile.forget]


def cached_fit(cache: ModelCache, key: str, spec: ModelSpec, device,
               train: Callable[[], tuple[nn.Module, dict]], meta: dict):
    """Load ``key`` or train and store it, once however many workers ask (a lock per key);
    ``meta`` (data fingerprint, split hash, recipe, seed, method) goes into the sidecar."""
    return cache.build_model(key, spec, device, train, meta)


def prepare(
    spec: RelearnSpec,
    ds: Dataset,
    seed: int,
    cache: ModelCache,
    progress: Progress | None,
    forget_set: str | None = None,
) -> Prepared:
    device = resolve_device(spec.device)
    c, h, _ = ds.image_shape
    profile = profile_for(spec.dataset, len(ds.y_train), ds.image_shape)
    recipe = spec.recipe(profile.train)
    mspec = ModelSpec(spec.model or profile.model, c, ds.num_classes, h)
    fspec = parse_forget(forget_set or forget_sets(spec, profile)[0])
    y_cpu, canaries = canary_labels(fspec, ds.y_train, ds.num_classes, seed)
    x, y = ds.x_train.to(device), y_cpu.to(device)
    base = dict(data=ds.fingerprint, labels=cache_key(y=y_cpu.tolist()), model=mspec.to_dict(),
                recipe=recipe.to_dict(), seed=seed, device=device.type,
                until_fit=spec.fit_target)
    okey = cache_key(kind="original", **base)

    def train_original():
        model = create_model(mspec, seed=seed)
        g = torch.Generator().manual_seed(seed)
        res = fit(model, x, y, torch.arange(len(y), device=device), recipe, generator=g,
                  track=True, progress=progress, label="original", until_fit=spec.fit_target)
        return model, {"learning_speed": res.learning_speed,
                       "steps": torch.tensor([res.steps])}

    original, extras = cached_fit(cache, okey, mspec, device, train_original,
                                   {"kind": "original", "data_fingerprint": ds.fingerprint,
                                    **base})
    taken = int(extras["steps"][0]) if "steps" in extras else recipe.steps
    # the oracle follows the original's learning-rate curve for exactly as many steps
    recipe = recipe.with_(stop_after=taken) if taken < recipe.steps else recipe
    fitted = (predict(original, x).argmax(1) == y).cpu()
    scores = None
    if fspec.needs_scores:
        n_source = len(ds.y_train)
        scores = (load_cscores(Path(spec.cscores), n_source) if spec.cscores
                  else extras["learning_speed"])
    forget = select_forget(fspec, y_cpu, ds.num_classes, seed, canaries=canaries,
                           scores=scores, fitted=fitted)
    split = make_split(forget, len(y_cpu), seed)
    rkey = cache_key(kind="retrain", original=okey, split=split.hash)
    prep = Prepared(ds, profile, mspec, recipe, seed, x, y, ds.x_test.to(device),
                    ds.y_test.to(device), split, original, original,
                    float(fitted.float().mean() * 100), okey, fspec.text, taken, rkey)
    prep.oracle, _ = cached_fit(
        cache, rkey, mspec, device,
        lambda: (unlearn("retrain", original, prep.unlearn_data(), prep.context(progress)), {}),
        {"kind": "retrain", "data_fingerprint": ds.fingerprint, "split": split.hash, **base},
    )
    return prep
