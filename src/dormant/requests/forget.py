"""Deletion requests against a store: plan, unlearn, check, judge, record.

Each stage has its own module: ``plan`` (every refusal, then the ``request-started`` rows),
the request's deleter (``deleters``: it makes the new version and names its tamper oracle),
``assess`` (the checks, measured once for what a batch shares), ``policy`` (the verdict) and
``record`` (reports, ``request-finished`` rows, or ``request-failed``). This module only runs
them in order, under the store's lock, so concurrent requests queue and each builds on the
version the one before it promoted.

Several requests may run as one batch: one unlearning run on the union of their ids, one new
version, and each request's own rows, checks, verdict and report. The ``request-started``
rows are written before any work; a process killed after them leaves those rows, and the
rerun of the same request, or the same batch (same model version, ids, method and
hyper-parameters), resumes it under the same request ids. SIGTERM and SIGINT during a request
record ``request-failed`` like any other failure."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from dormant.data import Dataset
from dormant.engine import Progress, resolve_device
from dormant.failpoints import kill_point
from dormant.models import create_model
from dormant.requests.assess import (
    assess_batch,
    budget_dict,
    device_data,
    load_for,
    profile_of,
    recipe_of,
)
from dormant.requests.deleters import DEFAULT_PRESET, Job, Made, choose, method_hparams
from dormant.requests.deleters.retrain import DEFAULT_METHOD
from dormant.requests.manifest import contributors
from dormant.requests.plan import Plan, already_deleted_note, plan, start
from dormant.requests.policy import Policy
from dormant.requests.record import finish, promotion, record, record_failure
from dormant.requests.request import Interrupted, Request, RequestFailed, check_text
from dormant.requests.store import ModelStore
from dormant.requests.version import Version
from dormant.unlearn import UnlearnContext, UnlearnData

__all__ = ["DEFAULT_METHOD", "DEFAULT_PRESET", "Request", "RequestFailed",
           "already_deleted_note", "check_text", "method_hparams", "method_of",
           "process_batch", "process_request"]


def method_of(asked: str | None, hparams: dict, base: Version) -> str:
    """The request's method: the one ``asked`` for, else the claiming deleter's (``sisa`` on
    a SISA version), else the default (``retrain``); a method that cannot delete from
    ``base`` is one line."""
    return choose(asked, hparams, base)[1]


class _Signals:
    """SIGTERM and SIGINT during a request raise :class:`Interrupted` where the request is, so
    it records ``request-failed`` like any other failure. Armed right after the request's
    started rows commit: before them nothing is recorded, and a signal acts as it always does
    (the CLI turns SIGINT into one line; in the instant between the rows and the arming, a
    killed request is left unfinished, to resume like one killed with -9). Once the outcome
    rows start to commit, or once a failure is being recorded, a signal no longer interrupts:
    the request's outcome is settled and the command ends on its own right after. Only the
    main thread takes signals; elsewhere (a service's worker) nothing changes."""

    def __init__(self) -> None:
        self.settled = False
        """The outcome rows are committing or committed, or a failure is being recorded."""
        self.committed = False

    def _handler(self, signum, _frame) -> None:
        if self.settled:
            return
        self.settled = True  # the failure this raises is recorded undisturbed
        raise Interrupted(signum, signal.Signals(signum).name)

    @contextmanager
    def armed(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        old = {s: signal.signal(s, self._handler) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for s, h in old.items():
                signal.signal(s, h)

    @contextmanager
    def hold(self) -> Iterator[None]:
        """Around the outcome rows' commit: settled before it starts, committed once it
        went through (a failed commit is a failure like any other, and is recorded)."""
        self.settled = True
        yield
        self.committed = True

    def failing(self) -> None:
        self.settled = True


def process_request(store: ModelStore, ds: Dataset, req: Request, policy: Policy, *,
                    device: str = "auto", progress: Progress | None = None,
                    on_stage: Callable[[str], None] | None = None,
                    on_wait: Callable[[], None] | None = None) -> tuple[dict, Path]:
    """Process ``req``; returns its record and the folder holding its report."""
    return process_batch(store, ds, [req], policy, device=device, progress=progress,
                         on_stage=on_stage, on_wait=on_wait)[0]


def process_batch(store: ModelStore, ds: Dataset, reqs: list[Request], policy: Policy, *,
                  device: str = "auto", progress: Progress | None = None,
                  on_stage: Callable[[str], None] | None = None,
                  on_wait: Callable[[], None] | None = None) -> list[tuple[dict, Path]]:
    """Process ``reqs`` (same model, version, method and settings) with one unlearning run on
    the union of their ids: one new version, which each request records as its own, each
    with its own ledger rows, checks on its own ids, verdict and report. The version is
    promoted only if every request's verdict promotes it. Returns each request's record and
    report folder, in order."""
    stage = on_stage or (lambda _text: None)
    dev = resolve_device(device)
    signals = _Signals()
    with store.lock(on_wait):
        t0 = time.perf_counter()
        store.ledger.require_intact()  # before the sweep, which trusts the ledger
        store.sweep()
        p = plan(store, ds, reqs, stage)
        model, side, spec = load_for(store.path(p.base.rel), ds, None, dev)
        rids, to_version = start(store, p, policy, ds, stage)
        with signals.armed():
            try:
                kill_point("started")
                return _run(store, ds, p, model, side, spec, rids, to_version, policy, dev,
                            progress, stage, t0, signals.hold)
            except BaseException as e:
                if signals.committed:  # the outcome rows are in: nothing to undo
                    raise
                signals.failing()
                record_failure(store, p.base.name, rids, to_version, e)
                raise  # record_failure always raises; this line is never reached


def _known_profile(store: ModelStore, base: Version, budget: dict) -> dict | None:
    """The base version's backdoor profile if an earlier request measured it with this budget;
    it is read from the ledger, so nobody can swap it quietly."""
    def profiled(b: dict | None) -> dict:  # the shadow count never touches the profile
        return {k: v for k, v in (b or {}).items() if k != "lira_shadows"}

    for e in reversed(store.ledger.entries(kind="request-finished", model=base.name)):
        m, p = e.payload["measurements"], e.payload
        if profiled(m.get("budget")) != profiled(budget):
            continue
        if p.get("to_version") == base.version:
            return profile_of(m, "after")
        if p.get("from_version") == base.version:
            return profile_of(m, "before")
    return None


def _run(store: ModelStore, ds: Dataset, p: Plan, model, side: dict, spec, rids: list[str],
         to_version: int, policy: Policy, dev, progress, stage, t0: float, hold
         ) -> list[tuple[dict, Path]]:
    """Unlearn the union once, write the version, check every request, record the outcomes."""
    first, base = p.reqs[0], p.base
    manifest = store.manifest(base)  # verified before any work: a changed one stops here
    tensors = device_data(ds, dev)
    x, y = tensors[0], tensors[1]
    union = p.union
    retain = p.retain(len(y))
    forget = torch.tensor(union, dtype=torch.long)
    recipe = recipe_of(side, ds)
    what = f"{len(p.reqs)} requests, " if len(p.reqs) > 1 else ""
    ids = f"{len(union)} id{'s' if len(union) > 1 else ''}"
    stage(f"unlearning {what}{ids} from {base.name} v{base.version} with {p.method}")
    train_seed = side.get("seed", first.seed)
    ctx = UnlearnContext(recipe, lambda s=None: create_model(
        spec, seed=train_seed if s is None else s), first.seed, progress)
    data = UnlearnData(x, y, forget.to(dev), retain.to(dev), forget[:0].to(dev),
                       ds.num_classes)
    job = Job(base, model, side, spec, data, ctx, p.method, p.hparams, store, dev, stage)
    made = p.deleter.run(job)
    rel, sha = store.write_version(base.name, to_version, made.model, spec, {
        "kind": "unlearned", "request_ids": rids, "method": p.method, "hparams": p.hparams,
        "from_version": base.version, "dataset": ds.name,
        "data_fingerprint": ds.fingerprint, "recipe": recipe.to_dict(), "seed": train_seed,
    })
    files = [{"path": base.rel, "sha256": base.sha256, "role": "original"},
             {"path": rel, "sha256": sha, "role": "unlearned"}]
    more, extra = made.write(store, base.name, to_version)
    files += more
    kill_point("written")
    t2 = time.perf_counter()
    oracle = p.deleter.oracle(job, made)
    t_oracle = time.perf_counter() - t2
    cost = cost_of(made, t_oracle, len(p.reqs))
    stage("checking the new version against the old" + (
        f" for {len(p.reqs)} requests" if len(p.reqs) > 1 else ""))
    checked = assess_batch(
        model, made.model, tensors, [torch.tensor(a.new_ids, dtype=torch.long)
                                     for a in p.asks],
        retain, recipe, ds.num_classes, policy, oracle=oracle, seed=first.seed,
        old_known=_known_profile(store, base, budget_dict(policy)), spec=spec,
        progress=progress)
    promoted, why = promotion(checked, rids, first.accept_warnings)
    outcomes = []
    for i, (req, ask, rid, a) in enumerate(zip(p.reqs, p.asks, rids, checked, strict=True)):
        rec = record(
            a, promoted, why[i], kind="forget", request_id=rid, model=base.name,
            from_version=base.version, to_version=to_version, method=p.method,
            hparams=p.hparams, requester=req.requester, reason=req.reason,
            ids=len(ask.new_ids), already_deleted=ask.asked - len(ask.new_ids),
            already_deleted_by=ask.dropped, oracle=oracle.label,
            contributors=contributors(manifest, ask.new_ids),
            sha256={"original": base.sha256, "unlearned": sha},
            durations={"unlearn": round(made.seconds, 2), "oracle": round(t_oracle, 2),
                       "checks": round(a.seconds, 2),
                       "total": round(time.perf_counter() - t0, 2)},
            cost=cost, batch={"size": len(p.reqs), "index": i, "requests": rids}, **extra,
        )
        outcomes.append((rid, rec, {"ids": ask.new_ids, "files": files}))
    return finish(store, base.name, outcomes, hold)


def cost_of(made: Made, t_oracle: float, batch: int) -> dict:
    """A request's training cost against a full retrain of the model. ``training_seconds``:
    the unlearning run plus the oracle's retrain, split evenly among a batch's requests;
    ``full_retrain_seconds``: what retraining the model from scratch costs by its deleter
    (a SISA version: every shard, measured when it was trained; a model dormant trained: its
    training run; a ``retrain`` request: the retrain itself), the same share of it; None when
    nobody measured it."""
    full = made.full_retrain_seconds
    spent = made.seconds + t_oracle
    return {"training_seconds": round(spent / batch, 3),
            "full_retrain_seconds": None if full is None else round(full / batch, 3),
            "batch_training_seconds": round(spent, 3)}
