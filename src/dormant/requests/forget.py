"""One deletion request against a store: record it, unlearn, check, judge, record the outcome.

The whole request runs under the store's lock, so concurrent requests queue and each builds
on the version the one before it promoted. The ``request-started`` row is written before any
work; a process killed after it leaves that row, and the rerun of the same request (same
model version, ids, method and hyper-parameters) resumes it under the same request id."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import signal
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from dormant.data import Dataset
from dormant.engine import Progress, resolve_device
from dormant.errors import DormantError
from dormant.models import create_model
from dormant.requests.assess import (
    assess,
    budget_dict,
    device_data,
    load_for,
    profile_of,
    recipe_of,
    record,
)
from dormant.requests.checks import RETRAINED_ORACLE, Oracle
from dormant.requests.policy import Policy
from dormant.requests.store import ModelStore, Version, one_line_of
from dormant.store.checkpoint import sidecar_path
from dormant.store.files import atomic_write_text
from dormant.unlearn import UnlearnContext, UnlearnData, make_hparams, resolve_hparams, unlearn

DEFAULT_METHOD = "retrain"
"""Retraining without the request: it is the retrain oracle the tamper verdict compares every
method with, so its own excess is 0 by definition (verdict ``resists``) and no second model is
trained; at the store's scale it costs one training run. Any other method costs that retrain
anyway, as the tamper test's oracle, plus the attacks on it."""


@dataclass(frozen=True)
class Request:
    model: str
    ids: torch.Tensor
    requester: str
    reason: str
    version: int | None = None
    method: str = DEFAULT_METHOD
    hparams: dict = field(default_factory=dict)
    accept_warnings: bool = False
    seed: int = 0
    preset: str | None = None
    """The method's preset (``dormant methods --preset``); None: ``DEFAULT_PRESET``."""

    def __post_init__(self) -> None:
        check_text("requester", self.requester, "who asked for the deletion, e.g. alice")
        check_text("reason", self.reason, "why, in a few words, e.g. 'GDPR art. 17'")


def check_text(flag: str, value, hint: str) -> str:
    """A request's ``--requester`` or ``--reason``: recorded for good, so never empty."""
    if not isinstance(value, str) or not value.strip():
        raise DormantError(f"--{flag} is empty; say {hint}")
    return value


class RequestFailed(RuntimeError):
    """A request that failed after its ``request-started`` row for a reason other than bad
    input (a diverging method, a crash in a check); its ``request-failed`` row is written.
    The message is one line naming the request, the error and the ledger row."""

    def __init__(self, message: str, request_id: str, seq: int | None) -> None:
        super().__init__(message)
        self.request_id = request_id
        self.seq = seq


SHOWN_IDS = 10
"""How many already-deleted ids a request names (all of them are counted)."""


def already_deleted_note(dropped: dict[str, list[int]], asked: int) -> str:
    """``dropped`` (request id -> ids it deleted already) as one sentence."""
    n = sum(map(len, dropped.values()))
    parts = []
    for rid, ids in dropped.items():
        shown = ", ".join(map(str, ids[:SHOWN_IDS])) + (", ..." if len(ids) > SHOWN_IDS else "")
        parts.append(f"{len(ids)} by request {rid} ({shown})")
    return (f"{n} of the {asked} ids asked for were already deleted and are skipped: "
            + "; ".join(parts))


def _failpoint(name: str) -> None:
    """Crash testing: ``DORMANT_FAILPOINT=name`` kills the process here as ``kill -9`` would."""
    if os.environ.get("DORMANT_FAILPOINT") == name:
        os.kill(os.getpid(), signal.SIGKILL)


DEFAULT_PRESET = "backdoor"
"""CPU-sized budgets, those of the backdoor study (methods without them: class defaults)."""


def method_hparams(method: str, overrides: dict, preset: str | None = None,
                   n_train: int | None = None) -> dict:
    """Every hyper-parameter the request runs: ``resolve_hparams`` under ``preset`` (None:
    ``DEFAULT_PRESET``) with the user's overrides on top, checked; ``n_train`` is needed
    only by a preset in epochs."""
    return dataclasses.asdict(make_hparams(method, resolve_hparams(
        method, preset or DEFAULT_PRESET, overrides, n_train=n_train)))


def _key(base: Version, ids: list[int], method: str, hp: dict, seed: int) -> str:
    blob = json.dumps([base.name, base.version, base.sha256, ids, method, hp, seed],
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _known_profile(store: ModelStore, base: Version, budget: dict) -> dict | None:
    """The base version's backdoor profile if an earlier request measured it with this budget;
    it is read from the ledger, so nobody can swap it quietly."""
    for e in reversed(store.ledger.entries(kind="request-finished", model=base.name)):
        m, p = e.payload["measurements"], e.payload
        if m.get("budget") != budget:
            continue
        if p.get("to_version") == base.version:
            return profile_of(m, "after")
        if p.get("from_version") == base.version:
            return profile_of(m, "before")
    return None


def process_request(store: ModelStore, ds: Dataset, req: Request, policy: Policy, *,
                    device: str = "auto", progress: Progress | None = None,
                    on_stage: Callable[[str], None] | None = None,
                    on_wait: Callable[[], None] | None = None) -> tuple[dict, Path]:
    """Process ``req``; returns its record and the folder holding its report."""
    stage = on_stage or (lambda _text: None)
    hp = method_hparams(req.method, req.hparams, req.preset, len(ds.y_train))
    dev = resolve_device(device)
    with store.lock(on_wait):
        t0 = time.perf_counter()
        store.sweep()
        base = store.resolve(req.model, req.version)
        base_path = store.verify_file(base)
        deleted = store.deleted(base)
        asked = sorted(int(i) for i in req.ids.tolist())
        new_ids = [i for i in asked if i not in deleted]
        if not new_ids:
            earlier = sorted({deleted[i] for i in asked})
            raise DormantError(
                f"all {len(asked)} ids were already deleted from {base.name} v{base.version} "
                f"by request {', '.join(earlier)}; nothing is done twice")
        dropped: dict[str, list[int]] = {}
        for i in asked:
            if i in deleted:
                dropped.setdefault(deleted[i], []).append(i)
        if dropped:
            stage(already_deleted_note(dropped, len(asked)))
        model, side, spec = load_for(base_path, ds, None, dev)
        key = _key(base, new_ids, req.method, hp, req.seed)
        resumed = next((e for e in store.unfinished(base.name) if e.payload["key"] == key), None)
        if resumed is not None:
            rid, to_version = resumed.request_id, resumed.payload["to_version"]
            store.ledger.append("request-resumed", {"restarts_row": resumed.seq},
                                request_id=rid, model=base.name)
            stage(f"resuming request {rid} (started at row {resumed.seq})")
        else:
            rid, to_version = uuid.uuid4().hex[:16], store.next_version(base.name)
            store.ledger.append("request-started", {
                "key": key, "from_version": base.version, "to_version": to_version,
                "ids": new_ids, "already_deleted": len(asked) - len(new_ids),
                "already_deleted_by": dropped,
                "method": req.method, "hparams": hp, "requester": req.requester,
                "reason": req.reason, "policy": policy.to_dict(), "seed": req.seed,
                "data_fingerprint": ds.fingerprint,
            }, request_id=rid, model=base.name)
        try:
            _failpoint("started")
            tensors = device_data(ds, dev)
            x, y = tensors[0], tensors[1]
            gone = torch.tensor(sorted({*deleted, *new_ids}), dtype=torch.long)
            keep = torch.ones(len(y), dtype=torch.bool)
            keep[gone] = False
            retain = torch.nonzero(keep).flatten()
            forget = torch.tensor(new_ids, dtype=torch.long)
            recipe = recipe_of(side, ds)
            stage(f"unlearning {len(new_ids)} ids from {base.name} v{base.version} with "
                  f"{req.method}")
            t1 = time.perf_counter()
            data = UnlearnData(x, y, forget.to(dev), retain.to(dev), forget[:0].to(dev),
                               ds.num_classes)
            train_seed = side.get("seed", req.seed)
            ctx = UnlearnContext(recipe, lambda s=None: create_model(
                spec, seed=train_seed if s is None else s), req.seed,
                                 progress)
            new = unlearn(req.method, model, data, ctx, **hp)
            t_unlearn = time.perf_counter() - t1
            rel, sha = store.write_version(base.name, to_version, new, spec, {
                "kind": "unlearned", "request_id": rid, "method": req.method, "hparams": hp,
                "from_version": base.version, "dataset": ds.name,
                "data_fingerprint": ds.fingerprint, "recipe": recipe.to_dict(), "seed": train_seed,
            })
            _failpoint("written")
            # the tamper verdict compares with the retrain oracle of this very request: the new
            # model when the method is retrain, else a retrain the way ``retrain`` would do it
            t2 = time.perf_counter()
            if req.method == "retrain":
                oracle = Oracle.itself()
            else:
                stage("retraining the oracle the tamper test compares with")
                oracle = Oracle(RETRAINED_ORACLE, unlearn("retrain", model, data, ctx))
            t_oracle = time.perf_counter() - t2
            stage("checking the new version against the old")
            a = assess(model, new, tensors, forget, retain, recipe, ds.num_classes, policy,
                       oracle=oracle, seed=req.seed,
                       old_profile=_known_profile(store, base, budget_dict(policy)),
                       progress=progress)
            promoted, why = a.promote(req.accept_warnings)
            rec = record(
                a, promoted, why, kind="forget", request_id=rid, model=base.name,
                from_version=base.version, to_version=to_version, method=req.method, hparams=hp,
                requester=req.requester, reason=req.reason, ids=len(new_ids),
                already_deleted=len(asked) - len(new_ids), already_deleted_by=dropped,
                oracle=oracle.label,
                sha256={"original": base.sha256, "unlearned": sha},
                durations={"unlearn": round(t_unlearn, 2), "oracle": round(t_oracle, 2),
                           "checks": round(a.seconds, 2),
                           "total": round(time.perf_counter() - t0, 2)},
            )
            out = store.root / "requests" / rid
            from dormant.requests.report import write_request_report  # matplotlib: when used

            write_request_report(rec, out)
            atomic_write_text(out / "record.json", json.dumps(rec, indent=2))
            _failpoint("reported")
            store.ledger.append("request-finished", {
                **{k: v for k, v in rec.items() if k not in ("request_id", "model")},
                "ids": new_ids,
                "files": [{"path": base.rel, "sha256": base.sha256, "role": "original"},
                          {"path": rel, "sha256": sha, "role": "unlearned"}],
                "report": str(out.relative_to(store.root) / "report.html"),
            }, request_id=rid, model=base.name)
        except BaseException as e:
            _record_failure(store, base.name, rid, to_version, e)
    return rec, out


def _record_failure(store: ModelStore, name: str, rid: str, to_version: int,
                    e: BaseException) -> None:
    """Append ``request-failed`` (the error, one line) for a request that stopped after its
    ``request-started`` row, remove its half-made checkpoint, and raise: bad input as the
    ``DormantError`` it was (naming the request), anything else as :class:`RequestFailed`
    (from the original), an interrupt as itself."""
    error = f"{type(e).__name__}: {one_line_of(e)}"
    rel = store.rel(name, to_version)
    for p in (store.path(rel), sidecar_path(store.path(rel))):
        p.unlink(missing_ok=True)
    try:
        row = store.ledger.append("request-failed", {"error": error, "to_version": to_version},
                                  request_id=rid, model=name)
        seq, where = row.seq, f"recorded as request-failed at ledger row {row.seq}"
    except Exception as ledger_error:  # noqa: BLE001 - the original error matters more
        seq, where = None, f"and the ledger could not record it ({one_line_of(ledger_error)})"
    if not isinstance(e, Exception):
        raise e
    if isinstance(e, DormantError):
        raise DormantError(f"{e} (request {rid} {where})") from e
    raise RequestFailed(f"request {rid} failed: {error}; {where}; rerun the same request to "
                        "retry it", rid, seq) from e
