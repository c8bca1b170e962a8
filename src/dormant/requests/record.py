"""The last stage of a request: each request's record, report and ``request-finished`` row,
or, when anything went wrong after its ``request-started`` row, its ``request-failed`` row
with the half-made version's files removed."""

from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path

from dormant.errors import DormantError
from dormant.failpoints import kill_point
from dormant.requests.assess import Assessment
from dormant.requests.request import Interrupted, RequestFailed
from dormant.requests.store import ModelStore, one_line_of
from dormant.store.checkpoint import versions
from dormant.store.files import atomic_write_text


def record(assessment: Assessment, promoted: bool, why: str, **fields) -> dict:
    """The request record: what the report renders and the ledger keeps."""
    return {
        **fields,
        "measurements": assessment.measurements,
        "checks": [c.to_dict() for c in assessment.checks],
        "verdict": assessment.verdict,
        "promoted": promoted,
        "promotion_reason": why,
        "versions": versions(),
    }


def promotion(checked: list[Assessment], rids: list[str], accept: bool
              ) -> tuple[bool, list[str]]:
    """All or nothing: the batch's one version is promoted only if every request promotes it."""
    each = [a.promote(accept) for a in checked]
    promoted = all(ok for ok, _ in each)
    if promoted or len(each) == 1:
        return promoted, [why for _, why in each]
    blockers = ", ".join(rid for (ok, _), rid in zip(each, rids, strict=True) if not ok)
    return False, [why if not ok else f"not promoted: request {blockers} of its batch was not"
                   for ok, why in each]


def finish(store: ModelStore, name: str, outcomes: list[tuple[str, dict, dict]],
           hold=nullcontext) -> list[tuple[dict, Path]]:
    """Write each request's report and ``record.json`` into ``requests/ID``, then every
    ``request-finished`` row in one transaction (a batch's version exists once every request
    says so). ``outcomes``: (request id, record, what the row adds to the record). ``hold()``
    is held around the commit: from there on a signal must not fail the request."""
    from dormant.requests.report import write_request_report  # matplotlib: when used

    out, rows = [], []
    for rid, rec, extra in outcomes:
        folder = store.root / "requests" / rid
        write_request_report(rec, folder)
        atomic_write_text(folder / "record.json", json.dumps(rec, indent=2))
        kill_point("reported")
        rows.append((rid, {**{k: v for k, v in rec.items() if k not in ("request_id", "model")},
                           **extra,
                           "report": str(folder.relative_to(store.root) / "report.html")}))
        out.append((rec, folder))
    with hold(), store.ledger.transaction():
        for rid, payload in rows:
            store.ledger.append("request-finished", payload, request_id=rid, model=name)
    return out


def record_failure(store: ModelStore, name: str, rids: list[str], to_version: int,
                   e: BaseException) -> None:
    """Append ``request-failed`` (the error, one line) for each request that stopped after its
    ``request-started`` row, remove the half-made version's own files (a SISA version's new
    shard checkpoints, named by no row, go at the next ``sweep``), and raise: bad input as the
    ``DormantError`` it was (naming the request), a signal as :class:`Interrupted`, anything
    else (a full disk included) as :class:`RequestFailed`, from the original."""
    error = f"{type(e).__name__}: {one_line_of(e)}"
    for p in store.version_files(name, to_version):
        p.unlink(missing_ok=True)
    for r in rids:
        store.drop_report(r)
    rid = rids[0] if len(rids) == 1 else f"{rids[0]} (and {len(rids) - 1} more of its batch)"
    try:
        with store.ledger.transaction():
            rows = [store.ledger.append("request-failed", {"error": error,
                                                           "to_version": to_version},
                                        request_id=r, model=name) for r in rids]
        seq, where = rows[0].seq, f"recorded as request-failed at ledger row {rows[0].seq}"
    except Exception as ledger_error:  # noqa: BLE001 - the original error matters more
        seq, where = None, f"and the ledger could not record it ({one_line_of(ledger_error)})"
    if isinstance(e, Interrupted):
        raise RequestFailed(f"request {rid} was {e}; {where}; rerun the same request to "
                            "retry it", rids[0], seq, 128 + e.signum) from e
    if not isinstance(e, Exception):
        raise e
    if isinstance(e, DormantError):
        raise DormantError(f"{e} (request {rid} {where})") from e
    raise RequestFailed(f"request {rid} failed: {error}; {where}; rerun the same request to "
                        "retry it", rids[0], seq) from e
