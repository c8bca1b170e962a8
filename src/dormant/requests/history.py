"""The ledger as a history: one line per row, and for each request the test accuracy of the
version it made and the cumulative drift since the model's first version."""

from __future__ import annotations

from dormant.requests.ledger import Ledger


def _fmt(v: float | None, sign: bool = False) -> str:
    if v is None:
        return "-"
    return f"{v:+.1f}" if sign else f"{v:.1f}"


def history_rows(ledger: Ledger, model: str | None = None) -> list[dict]:
    """Rows as display strings; ``drift`` follows each version's lineage back to its root
    (the model as added), whose test accuracy the lineage's first request measured."""
    made: dict[tuple[str, int], tuple[int | None, float, float]] = {}
    out = []
    for e in ledger.entries(model=model):
        p = e.payload
        row = {"row": str(e.seq), "time": e.ts[5:19].replace("T", " "),
               "kind": e.kind.removeprefix("request-"), "model": e.model or "-",
               "request": (e.request_id or "-")[:8], "versions": "-",
               "ids": "-", "method": "-", "verdict": "-", "promoted": "-", "test": "-",
               "drift": "-"}
        if e.kind == "model-added":
            row["versions"] = f"v{p['version']}"
        elif e.kind in ("request-started", "request-finished"):
            row.update(versions=f"v{p['from_version']} -> v{p['to_version']}",
                       ids=str(len(p["ids"])), method=p["method"])
        elif e.kind == "request-failed":
            row["verdict"] = "failed"
        elif e.kind in ("version-approved", "version-rejected"):  # a reviewer's sign-off
            row.update(kind=e.kind.removeprefix("version-"), versions=f"v{p['version']}",
                       verdict=f"by {p['by']}",
                       promoted="yes" if e.kind == "version-approved" else "no")
        if e.kind in ("request-finished", "audit"):
            m = p["measurements"]
            before, after = m["before"]["test_acc"], m["after"]["test_acc"]
            root = _made(made, e) if e.kind == "request-finished" else before
            row.update(verdict=p["verdict"], test=_fmt(after), drift=_fmt(after - root, True),
                       promoted="yes" if p.get("promoted") else "no")
        out.append(row)
    return out


def _made(made: dict, e) -> float:
    """Record the version a ``request-finished`` row made in ``made`` and return the test
    accuracy of its lineage's root."""
    p = e.payload
    m = p["measurements"]
    src = made.get((e.model, p["from_version"]))
    root = src[1] if src is not None else m["before"]["test_acc"]
    made[(e.model, p["to_version"])] = (p["from_version"], root, m["after"]["test_acc"])
    return root


def accuracy_by_version(ledger: Ledger, model: str) -> dict[int, dict]:
    """Each version's test accuracy and its drift since its lineage's root (points), as the
    requests measured them: a model as added is measured by the first request made on it."""
    made: dict = {}
    out: dict[int, dict] = {}
    for e in ledger.entries(kind="request-finished", model=model):
        p = e.payload
        before = p["measurements"]["before"]["test_acc"]
        root = _made(made, e)
        out.setdefault(p["from_version"], {"test_acc": before,
                                           "drift": round(before - root, 4)})
        after = made[(e.model, p["to_version"])][2]
        out.setdefault(p["to_version"], {"test_acc": after, "drift": round(after - root, 4)})
    return out


def cost_line(ledger: Ledger, model: str | None = None) -> str | None:
    """The cumulative training cost of the finished requests against a full retrain per
    request, in one line; a batch's requests share one full retrain, as they share one
    unlearning run. None when no request measured both."""
    spent = full = 0.0
    n = 0
    for e in ledger.entries(kind="request-finished", model=model):
        cost = e.payload.get("cost") or {}
        if cost.get("full_retrain_seconds") is None:
            continue
        spent += cost["training_seconds"]
        full += cost["full_retrain_seconds"]
        n += 1
    if not n:
        return None
    head = (f"training: {spent:.1f} s over {n} request{'s' if n > 1 else ''}, against "
            f"{full:.1f} s for a full retrain per request (a batch shares one): ")
    # unlearning can cost more than retraining (a small model, a long budget): say so, never
    # a negative saving
    if spent <= 0:
        return head + f"{full:.1f} s saved"
    if full >= spent:
        return head + f"{full - spent:.1f} s saved ({full / spent:.1f}x cheaper)"
    return head + (f"{spent - full:.1f} s more than retraining ({spent / full:.1f}x the "
                   "retrain's cost)" if full > 0 else f"{spent - full:.1f} s more than "
                   "retraining")
