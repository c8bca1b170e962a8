"""Deletion requests against a store: record them, unlearn, check, judge, record the outcome.

Requests run under the store's lock, so concurrent ones queue and each builds on the version
the one before it promoted. Several requests may run as one batch: one unlearning run on the
union of their ids, one new version, and each request's own rows, checks, verdict and report.
The ``request-started`` rows are written before any work; a process killed after them leaves
those rows, and the rerun of the same request, or the same batch (same model version, ids,
method and hyper-parameters), resumes it under the same request ids."""

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
    known_of,
    load_for,
    profile_of,
    recipe_of,
    record,
)
from dormant.requests.checks import RETRAINED_ORACLE, Oracle
from dormant.requests.policy import Policy
from dormant.requests.sharded import initialiser, is_sisa, read_sisa, sisa_block, write_parts
from dormant.requests.store import ModelStore, Version, one_line_of
from dormant.store.files import atomic_write_text
from dormant.unlearn import UnlearnContext, UnlearnData, make_hparams, resolve_hparams, unlearn
from dormant.unlearn.sisa import forget as sisa_forget
from dormant.unlearn.sisa import side_by_side

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
    method: str | None = None
    """None: ``sisa`` on a SISA version, ``DEFAULT_METHOD`` on any other."""
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
    return process_batch(store, ds, [req], policy, device=device, progress=progress,
                         on_stage=on_stage, on_wait=on_wait)[0]


def method_of(asked: str | None, hparams: dict, base: Version) -> str:
    """The request's method: the one ``asked`` for, else ``sisa`` on a SISA version and
    ``DEFAULT_METHOD`` on any other. A SISA version is unlearned by ``sisa`` only: any other
    method would leave a model without the shards the next deletion needs."""
    method = asked or ("sisa" if is_sisa(base) else DEFAULT_METHOD)
    if is_sisa(base) and method != "sisa":
        raise DormantError(f"{base.name} v{base.version} is a SISA ensemble; delete from it with "
                           f"--method sisa (the default), not {method}")
    if method == "sisa" and not is_sisa(base):
        raise DormantError(f"--method sisa needs a SISA version, and {base.name} "
                           f"v{base.version} is one model; train one with dormant train --sisa")
    if method == "sisa" and hparams:
        raise DormantError("a SISA version's shards, slices and aggregate were fixed when it "
                           "was trained; drop --hparam")
    return method


def _check_batch(reqs: list[Request]) -> None:
    if not reqs:
        raise DormantError("no requests to process; give --ids at least once")
    first = reqs[0]
    for r in reqs[1:]:
        for what in ("model", "version", "method", "hparams", "preset", "seed",
                     "accept_warnings"):
            if getattr(r, what) != getattr(first, what):
                raise DormantError(f"the requests of one batch must share their {what}; "
                                   "process the others as another batch")


def process_batch(store: ModelStore, ds: Dataset, reqs: list[Request], policy: Policy, *,
                  device: str = "auto", progress: Progress | None = None,
                  on_stage: Callable[[str], None] | None = None,
                  on_wait: Callable[[], None] | None = None) -> list[tuple[dict, Path]]:
    """Process ``reqs`` (same model, version, method and settings) with one unlearning run on
    the union of their ids: one new version, which each request records as its own, each
    with its own ledger rows, checks on its own ids, verdict and report. The version is
    promoted only if every request's verdict promotes it. Returns each request's record and
    report folder, in order."""
    _check_batch(reqs)
    stage = on_stage or (lambda _text: None)
    first = reqs[0]
    dev = resolve_device(device)
    with store.lock(on_wait):
        t0 = time.perf_counter()
        store.sweep()
        base = store.resolve(first.model, first.version)
        base_path = store.verify_file(base)
        method = method_of(first.method, first.hparams, base)
        if method == "sisa":  # fixed by the version, not by the request
            hp = {k: base.sisa["plan"][k] for k in ("shards", "slices", "aggregate")}
        else:
            hp = method_hparams(method, first.hparams, first.preset, len(ds.y_train))
        deleted = store.deleted(base)
        asks = [_new_ids(r, deleted, base, stage) for r in reqs]
        model, side, spec = load_for(base_path, ds, None, dev)
        keys = [_key(base, new, method, hp, first.seed) for new, _, _ in asks]
        if len(reqs) > 1:  # a request of a batch resumes only in that same batch, at its
            # own place in it (two requests may ask for the same ids)
            batch = hashlib.sha256(json.dumps(keys).encode()).hexdigest()
            keys = [hashlib.sha256(f"{k}/{batch}/{i}".encode()).hexdigest()
                    for i, k in enumerate(keys)]
        rids, to_version = _start(store, base, reqs, asks, keys, method, hp, policy, ds, stage)
        try:
            _failpoint("started")
            out = _run(store, ds, reqs, asks, rids, to_version, base, deleted, model, side,
                       spec, method, hp, policy, dev, progress, stage, t0)
        except BaseException as e:
            _record_failure(store, base.name, rids, to_version, e)
    return out


def _new_ids(req: Request, deleted: dict[int, str], base: Version, stage
             ) -> tuple[list[int], int, dict[str, list[int]]]:
    """The ids of ``req`` not deleted yet, how many it asked for, and the ones dropped (by
    the request that deleted them)."""
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
    return new_ids, len(asked), dropped


def _start(store: ModelStore, base: Version, reqs: list[Request], asks, keys: list[str],
           method: str, hp: dict, policy: Policy, ds: Dataset, stage
           ) -> tuple[list[str], int]:
    """Each request's ``request-started`` row, or its ``request-resumed`` row when an earlier
    run of the same request (same batch) was killed; all in one transaction."""
    unfinished = {e.payload["key"]: e for e in store.unfinished(base.name)}
    resumed = [unfinished.get(k) for k in keys]
    earlier = [e for e in resumed if e is not None]
    to_version = earlier[0].payload["to_version"] if earlier else store.next_version(base.name)
    rids = []
    with store.ledger.transaction():
        for req, (new_ids, asked, dropped), key, e in zip(reqs, asks, keys, resumed,
                                                          strict=True):
            if e is not None:
                rids.append(e.request_id)
                store.ledger.append("request-resumed", {"restarts_row": e.seq},
                                    request_id=e.request_id, model=base.name)
                stage(f"resuming request {e.request_id} (started at row {e.seq})")
                continue
            rid = uuid.uuid4().hex[:16]
            rids.append(rid)
            store.ledger.append("request-started", {
                "key": key, "from_version": base.version, "to_version": to_version,
                "ids": new_ids, "already_deleted": asked - len(new_ids),
                "already_deleted_by": dropped,
                "method": method, "hparams": hp, "requester": req.requester,
                "reason": req.reason, "policy": policy.to_dict(), "seed": req.seed,
                "data_fingerprint": ds.fingerprint, "batch": len(reqs),
            }, request_id=rid, model=base.name)
    return rids, to_version


def _run(store: ModelStore, ds: Dataset, reqs: list[Request], asks, rids: list[str],
         to_version: int, base: Version, deleted: dict[int, str], model, side: dict, spec,
         method: str, hp: dict,
         policy: Policy, dev, progress, stage, t0: float) -> list[tuple[dict, Path]]:
    """Unlearn the union once, write the version, check every request, record the outcomes."""
    first = reqs[0]
    tensors = device_data(ds, dev)
    x, y = tensors[0], tensors[1]
    union = sorted({i for new_ids, _, _ in asks for i in new_ids})
    gone = torch.tensor(sorted({*deleted, *union}), dtype=torch.long)
    keep = torch.ones(len(y), dtype=torch.bool)
    keep[gone] = False
    retain = torch.nonzero(keep).flatten()
    forget = torch.tensor(union, dtype=torch.long)
    recipe = recipe_of(side, ds)
    what = f"{len(reqs)} requests, " if len(reqs) > 1 else ""
    ids = f"{len(union)} id{'s' if len(union) > 1 else ''}"
    stage(f"unlearning {what}{ids} from {base.name} v{base.version} with {method}")
    train_seed = side.get("seed", first.seed)
    ctx = UnlearnContext(recipe, lambda s=None: create_model(
        spec, seed=train_seed if s is None else s), first.seed, progress)
    data = UnlearnData(x, y, forget.to(dev), retain.to(dev), forget[:0].to(dev),
                       ds.num_classes)
    t1 = time.perf_counter()
    sisa_out = None
    if method == "sisa":
        init = initialiser(spec)
        after, done = sisa_forget(read_sisa(store, base, len(y)), x, y, forget, init,
                                  progress=progress,
                                  workers=side_by_side(dev, base.sisa["plan"]["shards"]))
        new = after.ensemble(init, dev)
        stage(f"retrained {len(done.stages)} of {after.plan.shards} shards: " + ", ".join(
            f"shard {s} from slice {r}" for s, r in sorted(done.stages.items())))
    else:
        new = unlearn(method, model, data, ctx, **hp)
    t_unlearn = time.perf_counter() - t1
    rel, sha = store.write_version(base.name, to_version, new, spec, {
        "kind": "unlearned", "request_ids": rids, "method": method, "hparams": hp,
        "from_version": base.version, "dataset": ds.name,
        "data_fingerprint": ds.fingerprint, "recipe": recipe.to_dict(), "seed": train_seed,
    })
    files = [{"path": base.rel, "sha256": base.sha256, "role": "original"},
             {"path": rel, "sha256": sha, "role": "unlearned"}]
    if method == "sisa":
        files += write_parts(store, base.name, to_version, after)
        sisa_out = sisa_block(after, files, {
            "full_retrain_seconds": base.sisa.get("full_retrain_seconds"),
            "retrain_seconds": round(done.seconds, 3), "steps": done.steps,
            "retrained": [{"shard": s, "from_slice": r} for s, r in sorted(done.stages.items())],
        })
    _failpoint("written")
    # the tamper verdict compares with the retrain oracle of this very request: the new model
    # when the method is retrain or sisa (exact: its shards never saw the ids), else a retrain
    # the way ``retrain`` would do it, once for the whole batch
    t2 = time.perf_counter()
    if method in EXACT:
        oracle = Oracle.itself()
    else:
        stage("retraining the oracle the tamper test compares with")
        oracle = Oracle(RETRAINED_ORACLE, unlearn("retrain", model, data, ctx))
    t_oracle = time.perf_counter() - t2
    cost = cost_of(method, base, side, t_unlearn, t_oracle, sisa_out, len(reqs))
    checked = []
    old_known = _known_profile(store, base, budget_dict(policy))
    new_known = None
    for req, (new_ids, _, _) in zip(reqs, asks, strict=True):
        stage("checking the new version against the old" + (
            f" for request {len(checked) + 1} of {len(reqs)}" if len(reqs) > 1 else ""))
        a = assess(model, new, tensors, torch.tensor(new_ids, dtype=torch.long), retain, recipe,
                   ds.num_classes, policy, oracle=oracle, seed=req.seed,
                   old_known=old_known, new_known=new_known, progress=progress)
        # the models and the retain set are the same for every request of a batch, so are
        # their profiles and their retain and test accuracy
        old_known, new_known = known_of(a.measurements, "before"), \
            known_of(a.measurements, "after")
        checked.append(a)
    promoted, why = _promotion(checked, rids, first.accept_warnings)
    out = []
    finished = []
    for i, (req, (new_ids, asked, dropped), rid, a) in enumerate(
            zip(reqs, asks, rids, checked, strict=True)):
        rec = record(
            a, promoted, why[i], kind="forget", request_id=rid, model=base.name,
            from_version=base.version, to_version=to_version, method=method, hparams=hp,
            requester=req.requester, reason=req.reason, ids=len(new_ids),
            already_deleted=asked - len(new_ids), already_deleted_by=dropped,
            oracle=oracle.label,
            sha256={"original": base.sha256, "unlearned": sha},
            durations={"unlearn": round(t_unlearn, 2), "oracle": round(t_oracle, 2),
                       "checks": round(a.seconds, 2),
                       "total": round(time.perf_counter() - t0, 2)},
            cost=cost, batch={"size": len(reqs), "index": i, "requests": rids},
            **({"sisa": sisa_out} if sisa_out is not None else {}),
        )
        folder = store.root / "requests" / rid
        from dormant.requests.report import write_request_report  # matplotlib: when used

        write_request_report(rec, folder)
        atomic_write_text(folder / "record.json", json.dumps(rec, indent=2))
        _failpoint("reported")
        finished.append((rid, {
            **{k: v for k, v in rec.items() if k not in ("request_id", "model")},
            "ids": new_ids, "files": files,
            "report": str(folder.relative_to(store.root) / "report.html"),
        }))
        out.append((rec, folder))
    with store.ledger.transaction():  # a batch's version exists once every request says so
        for rid, payload in finished:
            store.ledger.append("request-finished", payload, request_id=rid, model=base.name)
    return out


EXACT = ("retrain", "sisa")
"""Methods whose new model is its own retrain oracle: ``retrain`` trains without the ids, and
``sisa`` retrains every shard that held one from before it saw them (tested bit for bit)."""


def cost_of(method: str, base: Version, side: dict, t_unlearn: float, t_oracle: float,
            sisa_out: dict | None, batch: int) -> dict:
    """A request's training cost against a full retrain of the model. ``training_seconds``:
    the unlearning run plus the oracle's retrain, split evenly among a batch's requests;
    ``full_retrain_seconds``: what retraining the model from scratch took when it was trained
    (a SISA version: every shard; a model dormant trained: its training run; a ``retrain``
    request: the retrain itself), the same share of it; None when nobody measured it."""
    if sisa_out is not None:
        full = sisa_out.get("full_retrain_seconds")
    elif method == "retrain":
        full = t_unlearn
    else:
        full = (side.get("metrics") or {}).get("seconds")
    spent = t_unlearn + t_oracle
    return {"training_seconds": round(spent / batch, 3),
            "full_retrain_seconds": None if full is None else round(full / batch, 3),
            "batch_training_seconds": round(spent, 3)}


def _promotion(checked: list, rids: list[str], accept: bool) -> tuple[bool, list[str]]:
    """All or nothing: the batch's one version is promoted only if every request promotes it."""
    each = [a.promote(accept) for a in checked]
    promoted = all(ok for ok, _ in each)
    if promoted or len(each) == 1:
        return promoted, [why for _, why in each]
    blockers = ", ".join(rid for (ok, _), rid in zip(each, rids, strict=True) if not ok)
    return False, [why if not ok else f"not promoted: request {blockers} of its batch was not"
                   for ok, why in each]


def _record_failure(store: ModelStore, name: str, rids: list[str], to_version: int,
                    e: BaseException) -> None:
    """Append ``request-failed`` (the error, one line) for each request that stopped after its
    ``request-started`` row, remove the half-made version's own files (a SISA version's new
    shard checkpoints, named by no row, go at the next ``sweep``), and raise: bad input as the
    ``DormantError`` it was (naming the request), anything else as :class:`RequestFailed`
    (from the original), an interrupt as itself."""
    error = f"{type(e).__name__}: {one_line_of(e)}"
    for p in store.version_files(name, to_version):
        p.unlink(missing_ok=True)
    rid = rids[0] if len(rids) == 1 else f"{rids[0]} (and {len(rids) - 1} more of its batch)"
    try:
        with store.ledger.transaction():
            rows = [store.ledger.append("request-failed", {"error": error,
                                                           "to_version": to_version},
                                        request_id=r, model=name) for r in rids]
        seq, where = rows[0].seq, f"recorded as request-failed at ledger row {rows[0].seq}"
    except Exception as ledger_error:  # noqa: BLE001 - the original error matters more
        seq, where = None, f"and the ledger could not record it ({one_line_of(ledger_error)})"
    if not isinstance(e, Exception):
        raise e
    if isinstance(e, DormantError):
        raise DormantError(f"{e} (request {rid} {where})") from e
    raise RequestFailed(f"request {rid} failed: {error}; {where}; rerun the same request to "
                        "retry it", rids[0], seq) from e
