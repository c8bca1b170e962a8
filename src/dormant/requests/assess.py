"""What ``dormant forget`` and ``dormant audit`` share: the data on the device, the checks of a
new model against an old one (its tamper test against a retrain oracle), the verdict, and the
record both write."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from dormant.data import Dataset
from dormant.data.split import make_split
from dormant.engine import Progress, Recipe
from dormant.errors import DormantError
from dormant.experiments.profiles import profile_for
from dormant.models import ModelSpec
from dormant.requests.checks import Oracle, RequestData, run_batch_checks
from dormant.requests.policy import Policy, judge, verdict
from dormant.store.checkpoint import load_model, read_sidecar


@dataclass(frozen=True)
class Assessment:
    measurements: dict
    checks: list
    verdict: str
    seconds: float

    def promote(self, accept_warnings: bool) -> tuple[bool, str]:
        """Only a pass, or a warn the operator accepted, promotes the new version."""
        bad = [c for c in self.checks if c.status != "pass"]
        names = ", ".join(f"{c.name} {c.status}" for c in bad)
        if self.verdict == "pass":
            return True, "every check passed"
        if self.verdict == "warn" and accept_warnings:
            return True, f"warnings accepted (--accept-warnings): {names}"
        if self.verdict == "warn":
            return False, (f"warnings not accepted: {names}; a reviewer may approve it "
                           "(dormant approve), or rerun with --accept-warnings")
        return False, f"failed: {names}"


def model_spec(ds: Dataset, arch: str) -> ModelSpec:
    c, h, _ = ds.image_shape
    return ModelSpec(arch, c, ds.num_classes, h)


def load_for(path: Path, ds: Dataset, arch: str | None, device: torch.device
             ) -> tuple[nn.Module, dict, ModelSpec]:
    """A checkpoint rebuilt for ``ds``: the architecture from its sidecar, else ``arch``."""
    side = read_sidecar(path)
    name = (side.get("model") or {}).get("name") or side.get("arch") or arch
    if name is None:
        raise DormantError(f"{path} does not say which model it holds; pass --model (e.g. "
                           "cnn-small)")
    spec = model_spec(ds, name)
    model, side = load_model(path, spec, device)
    if side.get("data_fingerprint") not in (None, ds.fingerprint):
        raise DormantError(
            f"{path} was trained on other data than this --dataset gives (fingerprints "
            "differ); pass the --dataset, --data-root and --train-size it was trained with")
    return model, side, spec


def recipe_of(side: dict, ds: Dataset) -> Recipe:
    """The original's training recipe (retraining and the attack's augmentation use it); a
    plain state dict gets the dataset profile's."""
    if "recipe" in side:
        return Recipe(**side["recipe"])
    return profile_for(ds.name, len(ds.y_train), ds.image_shape).train


def device_data(ds: Dataset, device: torch.device) -> tuple[torch.Tensor, ...]:
    return (ds.x_train.to(device), ds.y_train.to(device), ds.x_test.to(device),
            ds.y_test.to(device))


def assess(old: nn.Module, new: nn.Module, tensors: tuple[torch.Tensor, ...],
           forget: torch.Tensor, retain: torch.Tensor, recipe: Recipe, num_classes: int,
           policy: Policy, *, oracle: Oracle | None = None, seed: int = 0,
           old_known: dict | None = None, new_known: dict | None = None,
           spec: ModelSpec | None = None, progress: Progress | None = None) -> Assessment:
    """Run every check of ``new`` against ``old`` for the forgotten ids and judge them; the
    tamper test compares with ``oracle`` (``None``: no oracle, so no tamper verdict).
    ``old_known``/``new_known``: values already measured on the models
    (``checks.KNOWN``). ``spec``: the models' architecture (the LiRA check's shadows)."""
    return assess_batch(old, new, tensors, [forget], retain, recipe, num_classes, policy,
                        oracle=oracle, seed=seed, old_known=old_known, new_known=new_known,
                        spec=spec, progress=progress)[0]


def assess_batch(old: nn.Module, new: nn.Module, tensors: tuple[torch.Tensor, ...],
                 forgets: list[torch.Tensor], retain: torch.Tensor, recipe: Recipe,
                 num_classes: int, policy: Policy, *, oracle: Oracle | None = None,
                 seed: int = 0, old_known: dict | None = None, new_known: dict | None = None,
                 spec: ModelSpec | None = None, progress: Progress | None = None
                 ) -> list[Assessment]:
    """:func:`assess` for each request of a batch (its ids in ``forgets``), measuring once
    what the requests share (``checks.run_batch_checks``); each request's ``seconds`` are
    its share of the time."""
    t0 = time.perf_counter()
    x, y, x_test, y_test = tensors
    dev = x.device
    datas = []
    for forget in forgets:
        if len(forget) >= 2:
            split = make_split(forget.cpu(), len(y), seed)
            heldout, leakable = split.heldout, split.leakable
        else:  # one record: it is measured, and there is nothing left to leak to the attacker
            heldout, leakable = forget.cpu(), forget[:0].cpu()
        datas.append(RequestData(x, y, x_test, y_test, heldout.to(dev), leakable.to(dev),
                                 retain.to(dev), recipe, num_classes, spec))
    records = run_batch_checks(old, new, datas, policy.check_budget(), oracle=oracle,
                               old_known=old_known, new_known=new_known, progress=progress)
    share = (time.perf_counter() - t0) / len(forgets)
    out = []
    for m in records:
        checks = judge(policy, m)
        out.append(Assessment(m, checks, verdict(checks), share))
    return out


def profile_of(m: dict, when: str) -> dict:
    """The backdoor profile of a record's ``before`` or ``after`` model."""
    return {k: m[when][k] for k in ("nc_norms", "uap_success")}


def budget_dict(policy: Policy) -> dict:
    return policy.check_budget().model_dump()
