"""The first stage of a request: what the batch will do, proven possible before any row
records it, and the rows that record its start.

Everything that can refuse a request refuses here, under the store's lock and before a
``request-started`` row: a ledger that does not verify or is not the store's own, a store
that cannot be written, a base version that lacks a promoted deletion (it could never be
promoted), ids all deleted already, and a request that would leave nothing to train on. A
killed request is found by its key (the base version, ids, method, hyper-parameters and seed)
and resumed under the same ids; one whose base is no longer fit to build on is closed with
``request-failed``, never resumed."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass

import torch

from dormant.data import Dataset
from dormant.errors import DormantError
from dormant.requests.deleters import Deleter, choose
from dormant.requests.policy import Policy
from dormant.requests.request import Request, new_request_id
from dormant.requests.store import ModelStore
from dormant.requests.version import Version

SHOWN_IDS = 10
"""How many already-deleted ids a request names (all of them are counted)."""
SAME = ("model", "version", "method", "hparams", "preset", "seed", "accept_warnings")
"""What the requests of one batch share."""


@dataclass(frozen=True)
class Ask:
    """One request's ids not deleted yet, how many it asked for, and the ones dropped (by the
    request that deleted them)."""

    new_ids: list[int]
    asked: int
    dropped: dict[str, list[int]]


@dataclass(frozen=True)
class Plan:
    reqs: list[Request]
    base: Version
    deleter: Deleter
    method: str
    hparams: dict
    deleted: dict[int, str]
    asks: list[Ask]
    keys: list[str]

    @property
    def union(self) -> list[int]:
        return sorted({i for a in self.asks for i in a.new_ids})

    def retain(self, n_train: int) -> torch.Tensor:
        """Every training id neither deleted before nor asked for now."""
        keep = torch.ones(n_train, dtype=torch.bool)
        keep[torch.tensor(sorted({*self.deleted, *self.union}), dtype=torch.long)] = False
        return torch.nonzero(keep).flatten()


def already_deleted_note(dropped: dict[str, list[int]], asked: int) -> str:
    """``dropped`` (request id -> ids it deleted already) as one sentence."""
    n = sum(map(len, dropped.values()))
    parts = []
    for rid, ids in dropped.items():
        shown = ", ".join(map(str, ids[:SHOWN_IDS])) + (", ..." if len(ids) > SHOWN_IDS else "")
        parts.append(f"{len(ids)} by request {rid} ({shown})")
    return (f"{n} of the {asked} ids asked for were already deleted and are skipped: "
            + "; ".join(parts))


def check_batch(reqs: list[Request]) -> None:
    if not reqs:
        raise DormantError("no requests to process; give --ids at least once")
    first = reqs[0]
    for r in reqs[1:]:
        for what in SAME:
            if getattr(r, what) != getattr(first, what):
                raise DormantError(f"the requests of one batch must share their {what}; "
                                   "process the others as another batch")


def _ask(req: Request, deleted: dict[int, str], base: Version, stage) -> Ask:
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
    return Ask(new_ids, len(asked), dropped)


def _key(base: Version, ids: list[int], method: str, hp: dict, seed: int) -> str:
    blob = json.dumps([base.name, base.version, base.sha256, ids, method, hp, seed],
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _keys(plan_base: Version, asks: list[Ask], method: str, hp: dict, seed: int) -> list[str]:
    keys = [_key(plan_base, a.new_ids, method, hp, seed) for a in asks]
    if len(asks) > 1:  # a request of a batch resumes only in that same batch, at its own
        # place in it (two requests may ask for the same ids)
        batch = hashlib.sha256(json.dumps(keys).encode()).hexdigest()
        keys = [hashlib.sha256(f"{k}/{batch}/{i}".encode()).hexdigest()
                for i, k in enumerate(keys)]
    return keys


def plan(store: ModelStore, ds: Dataset, reqs: list[Request],
         stage: Callable[[str], None]) -> Plan:
    """The batch's plan, once every refusal has had its say (call under the store's lock)."""
    check_batch(reqs)
    first = reqs[0]
    store.require_own_ledger(first.model)
    base = store.resolve(first.model, first.version)
    store.verify_files(base)
    store.manifest(base)  # the data manifest it descends from, verified before any row
    deleter, method = choose(first.method, first.hparams, base)
    hp = deleter.settings(method, first.hparams, first.preset, base, len(ds.y_train))
    deleted = store.deleted(base)
    asks = [_ask(r, deleted, base, stage) for r in reqs]
    p = Plan(reqs, base, deleter, method, hp, deleted, asks,
             _keys(base, asks, method, hp, first.seed))
    store.require_writable(base.name)  # before anything, a stale request's closing included
    try:
        store.require_base(base)
    except DormantError as e:
        _close_stale(store, p, str(e))
        raise
    left = len(p.retain(len(ds.y_train)))
    if left == 0:
        raise DormantError(
            f"the request would delete every remaining training id of {base.name} "
            f"v{base.version} ({len(p.union)} asked, {len(deleted)} deleted before), leaving "
            "nothing to train or check on; a model of no data is no model: remove the model "
            "from service instead")
    _earlier_lineages(store, p, stage)
    return p


def _close_stale(store: ModelStore, p: Plan, why: str) -> None:
    """A killed request of this plan can never finish: record ``request-failed`` for it, so
    nothing advises resuming it, and say so in the refusal."""
    closed = {s.request_id for s in store.ledger.requests(p.base.name) if s.status == "failed"
              and str(s.last.payload.get("error", "")).startswith("superseded")}
    unfinished = {e.payload["key"]: e for e in store.unfinished(p.base.name)
                  if e.request_id not in closed}
    stale = [unfinished[k] for k in p.keys if k in unfinished]
    if not stale:
        return
    seq = close_unfinished(store, p.base.name, stale, why)
    raise DormantError(
        f"request {stale[0].request_id} was started on {p.base.name} v{p.base.version} and "
        f"cannot resume: {why}; it is closed as request-failed at ledger row {seq}: "
        "file its ids again without @VERSION")


def close_unfinished(store: ModelStore, name: str, stale: list, why: str) -> int:
    """Record ``request-failed`` (superseded) for killed requests that can never resume,
    remove what their runs wrote, and return the first new row's number."""
    with store.ledger.transaction():
        rows = [store.ledger.append("request-failed", {
            "error": f"superseded: {why}", "to_version": e.payload["to_version"]},
            request_id=e.request_id, model=name) for e in stale]
    for e in stale:
        for path in store.version_files(name, e.payload["to_version"]):
            path.unlink(missing_ok=True)  # what its killed run wrote: it will never be named
        store.drop_report(e.request_id)
    return rows[0].seq


def _earlier_lineages(store: ModelStore, p: Plan, stage) -> None:
    """Ids an older lineage of the name deleted, asked for again in this one, are said to be:
    the new lineage's model is whatever was added, so they are deleted from it as any other."""
    earlier = store.promoted_deletions(p.base.name, range(1, p.base.lineage))
    again = [i for i in p.union if i in earlier]
    if again:
        by = ", ".join(sorted({earlier[i] for i in again}))
        stage(f"{len(again)} of the ids were deleted from an earlier lineage of "
              f"{p.base.name} (request {by}); lineage {p.base.lineage} was added after, and "
              "this request deletes them from it too")


def _resumable(unfinished: list, req: Request, key: str):
    """The killed run this request resumes: the latest unfinished one of the same key and,
    for a request that brings its own id (a service's), of that id only."""
    same = [e for e in unfinished if e.payload["key"] == key
            and (req.request_id is None or e.request_id == req.request_id)]
    return same[-1] if same else None


def _require_new(store: ModelStore, name: str, rid: str, base: Version) -> None:
    """A request that brings its own id and resumes nothing must be new to the ledger. A killed
    run of that id whose base has moved since (a request promoted from a shell while a
    service was down) can never resume: it is closed as ``request-failed``, and so is this."""
    rows = store.ledger.entries(request_id=rid)
    if not rows:
        return
    started = next((e for e in rows if e.kind == "request-started"), None)
    if started is None or rows[-1].kind not in ("request-started", "request-resumed"):
        raise DormantError(f"request id {rid} is in the ledger already, for another request; "
                           "a new request needs a new id")
    was = started.payload["from_version"]
    seq = close_unfinished(store, name, [started], f"its base v{was} is not v{base.version}, "
                                                    "the version it would now build on")
    raise DormantError(f"request {rid} was started on {name} v{was} and cannot resume on "
                       f"v{base.version}; it is closed as request-failed at ledger row {seq}: "
                       "file its ids again")


def start(store: ModelStore, p: Plan, policy: Policy, ds: Dataset, stage
          ) -> tuple[list[str], int]:
    """Each request's ``request-started`` row, or its ``request-resumed`` row when an earlier
    run of the same request (same batch) was killed; all in one transaction."""
    name = p.base.name
    unfinished = store.unfinished(name)
    resumed = [_resumable(unfinished, req, k) for req, k in zip(p.reqs, p.keys, strict=True)]
    for req, e in zip(p.reqs, resumed, strict=True):
        if e is None and req.request_id:
            _require_new(store, name, req.request_id, p.base)
    earlier = [e for e in resumed if e is not None]
    to_version = earlier[0].payload["to_version"] if earlier else store.next_version(name)
    rids = []
    with store.ledger.transaction():
        for req, ask, key, e in zip(p.reqs, p.asks, p.keys, resumed, strict=True):
            if e is not None:
                rids.append(e.request_id)
                store.ledger.append("request-resumed", {"restarts_row": e.seq},
                                    request_id=e.request_id, model=name)
                stage(f"resuming request {e.request_id} (started at row {e.seq})")
                continue
            rid = req.request_id or new_request_id()
            rids.append(rid)
            store.ledger.append("request-started", {
                "key": key, "from_version": p.base.version, "to_version": to_version,
                "ids": ask.new_ids, "already_deleted": ask.asked - len(ask.new_ids),
                "already_deleted_by": ask.dropped,
                "method": p.method, "hparams": p.hparams, "requester": req.requester,
                "reason": req.reason, "policy": policy.to_dict(), "seed": req.seed,
                "data_fingerprint": ds.fingerprint, "batch": len(p.reqs),
            }, request_id=rid, model=name)
    return rids, to_version
