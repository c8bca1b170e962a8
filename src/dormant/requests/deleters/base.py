"""The deleter base class and registry (see :mod:`dormant.requests.deleters`)."""


from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from dormant.errors import DormantError
from dormant.models import ModelSpec
from dormant.requests.checks import RETRAINED_ORACLE, Oracle
from dormant.requests.version import Version
from dormant.unlearn import (
    UnlearnContext,
    UnlearnData,
    get_method,
    make_hparams,
    resolve_hparams,
    unlearn,
)

DEFAULT_PRESET = "backdoor"
"""CPU-sized budgets, those of the backdoor study (methods without them: class defaults)."""


@dataclass(frozen=True)
class Job:
    """What a deleter gets: the base version (loaded), the data with the batch's union as
    the forget set, and the method and hyper-parameters the request runs."""

    base: Version
    model: nn.Module
    side: dict
    spec: ModelSpec
    data: UnlearnData
    ctx: UnlearnContext
    method: str
    hparams: dict
    store: object  # the ModelStore, for the deleters whose versions have files of their own
    device: torch.device
    stage: Callable[[str], None]


@dataclass
class Made:
    """A deleter's new model, the seconds it took, what a full retrain costs against it
    (None: nobody measured it) and ``write(store, name, version) -> (files, extra)``: the
    version's own files beyond its checkpoint, and what the ledger row adds."""

    model: nn.Module
    seconds: float
    full_retrain_seconds: float | None
    write: Callable = field(default=lambda _store, _name, _version: ([], {}))


def method_hparams(method: str, overrides: dict, preset: str | None = None,
                   n_train: int | None = None) -> dict:
    """Every hyper-parameter the request runs: ``resolve_hparams`` under ``preset`` (None:
    ``DEFAULT_PRESET``) with the user's overrides on top, checked; ``n_train`` is needed
    only by a preset in epochs."""
    return dataclasses.asdict(make_hparams(method, resolve_hparams(
        method, preset or DEFAULT_PRESET, overrides, n_train=n_train)))


class Deleter:
    """An approximate deletion: run the method on the base version. Subclasses say more."""

    name = "approximate"
    methods: tuple[str, ...] = ()
    """The methods it runs; an empty tuple with ``catch_all`` means every method no other
    deleter names."""
    catch_all = True
    exact = False
    """The new model is its own retrain oracle (trained as if the ids had never been seen)."""
    default = False
    """The method a request without ``--method`` gets on a version no deleter claims."""
    oracle_label = RETRAINED_ORACLE

    needs_claim = False
    """It deletes only from versions it claims."""

    def claims(self, base: Version) -> bool:
        """Only this deleter can delete from ``base`` (its versions have files of its own)."""
        return False

    def check_overrides(self, overrides: dict) -> None:
        """Refuse ``--hparam`` values this deleter cannot take, before anything is opened."""

    def unfit(self, base: Version, method: str) -> str:
        """Why ``method`` cannot run on ``base`` when this deleter claims ``base`` (or needs a
        base it claims); one line."""
        return f"--method {method} cannot delete from {base.name} v{base.version}"

    def settings(self, method: str, overrides: dict, preset: str | None, base: Version,
                 n_train: int) -> dict:
        return method_hparams(method, overrides, preset, n_train)

    def run(self, job: Job) -> Made:
        t0 = time.perf_counter()
        new = unlearn(job.method, job.model, job.data, job.ctx, **job.hparams)
        return Made(new, time.perf_counter() - t0,
                    (job.side.get("metrics") or {}).get("seconds"))

    def added_parts(self, store, name: str, version: int, checkpoint, side: dict
                    ) -> tuple[list[dict], dict]:
        """The files a checkpoint being added brings beside itself for this deleter (a SISA
        ensemble's shards), written into the store, and what the ledger row adds."""
        return [], {}

    def oracle(self, job: Job, made: Made) -> Oracle:
        """The retrain the tamper test compares with: a retrain on the retain set with the
        original's recipe, init and seed, once for the whole batch."""
        if self.exact:
            return Oracle.itself()
        job.stage("retraining the oracle the tamper test compares with")
        return Oracle(self.oracle_label, unlearn("retrain", job.model, job.data, job.ctx))


_DELETERS: dict[str, Deleter] = {}


def register_deleter(deleter: Deleter) -> Deleter:
    """Register ``deleter`` under its ``name`` (a later one of the same name replaces it)."""
    _DELETERS[deleter.name] = deleter
    return deleter


def available_deleters() -> list[str]:
    """Every registered deleter (the built-ins register when ``dormant.requests.deleters``
    is imported, which importing this module does first)."""
    return list(_DELETERS)


def add_model(store, name: str, checkpoint, *, arch: str | None = None,
              new_lineage: str | None = None, manifest: dict[int, str] | None = None
              ) -> Version:
    """``ModelStore.add`` with every deleter's ``added_parts``: a model as the deleters that
    will delete from it need it in the store."""

    def parts(st, n: str, version: int, ckpt, side: dict) -> tuple[list[dict], dict]:
        files: list[dict] = []
        extra: dict = {}
        for d in _DELETERS.values():
            more, add = d.added_parts(st, n, version, ckpt, side)
            files += more
            extra.update(add)
        return files, extra

    return store.add(name, checkpoint, arch=arch, new_lineage=new_lineage, parts=parts,
                     manifest=manifest)


def owner_of(method: str) -> Deleter:
    """The deleter that runs ``method`` (an unknown method is one line naming the known)."""
    get_method(method)
    named = [d for d in _DELETERS.values() if method in d.methods]
    if named:
        return named[-1]
    return next(d for d in reversed(_DELETERS.values()) if d.catch_all)


def choose(method: str | None, overrides: dict, base: Version) -> tuple[Deleter, str]:
    """The deleter and method of a request on ``base``: the one asked for, else the claiming
    deleter's own method on a version a deleter claims, else the default deleter's."""
    claimer = next((d for d in _DELETERS.values() if d.claims(base)), None)
    if method is None:
        chosen = claimer or next(d for d in _DELETERS.values() if d.default)
        method = chosen.methods[0]
    owner = owner_of(method)
    if claimer is not None and owner is not claimer:
        raise DormantError(claimer.unfit(base, method))
    if claimer is None and owner.needs_claim:
        raise DormantError(owner.unfit(base, method))
    owner.check_overrides(overrides)
    return owner, method
