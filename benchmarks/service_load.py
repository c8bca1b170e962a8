"""The service under load: one ``dormant serve`` on the loopback, 20 concurrent submissions and
200 status reads while the worker processes them.

Checks, and prints as JSON: every submission answered 202 and was processed exactly once (one
``request-started`` and one ``request-finished`` ledger row per request, none failed, 20
versions), the ledger verifies with every file re-hashed, and the p50/p99 latency of
``GET /requests/{id}``, against ``GET /healthz`` (no store read; the reference) measured in the
same run, interleaved. Exits 1 if a check fails. The store: a digits MLP trained here, the
permissive test policy (tiny check budget), one thread.

    .venv/bin/python benchmarks/service_load.py [--submissions 20] [--reads 200]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from dormant.cli import main
from dormant.requests import Ledger
from dormant.service.db import ServiceDB
from dormant.service.local import LocalService
from dormant.service.tokens import create_token

POLICY = "".join(f"{c}: {{warn: null, fail: null}}\n" for c in (
    "retain_drop", "test_drop", "forget_gap", "mia_auc", "excess", "excess_leaked",
    "nc_shrink", "uap_jump")) + """\
budget: {relearn_steps: 10, relearn_lr: 1.0e-3, eval_every: 5, leaked_k: 2,
         defender_images: 40, nc: {epochs: 1, batch_size: 20}, uap: {steps: 3},
         mia_size: 100}
"""


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def run(submissions: int, reads: int, root: Path) -> dict:
    store = root / "store"
    with contextlib.redirect_stdout(sys.stderr):  # stdout is for the JSON
        assert main(["train", "--dataset", "digits", "--out", str(root / "train"), "--store",
                     str(store), "--name", "digits", "--device", "cpu"]) == 0
    (root / "policy.yaml").write_text(POLICY)
    token, _ = create_token(ServiceDB(store), "requester", "load")
    headers = {"Authorization": f"Bearer {token}"}
    with LocalService(store, "--policy", str(root / "policy.yaml")) as svc, \
            httpx.Client(base_url=svc.url, headers=headers, timeout=60) as c:
        def submit(i: int) -> tuple[int, str]:
            r = c.post("/requests", json={"model": "digits", "ids": [5 * i + j for j in
                                                                     range(5)],
                                          "requester": f"subject-{i}", "reason": "load"})
            return r.status_code, r.json().get("id", "")

        t0 = time.perf_counter()
        with ThreadPoolExecutor(submissions) as pool:
            answers = list(pool.map(submit, range(submissions)))
        submit_s = time.perf_counter() - t0
        rids = [rid for _, rid in answers]
        status_ms, health_ms = [], []
        done = threading.Event()

        def read(i: int) -> None:
            for path, into in ((f"/requests/{rids[i % len(rids)]}", status_ms),
                               ("/healthz", health_ms)):
                t = time.perf_counter()
                r = c.get(path)
                into.append(1000 * (time.perf_counter() - t))
                assert r.status_code == 200, r.text

        with ThreadPoolExecutor(8) as pool:  # 200 reads while the queue drains
            list(pool.map(read, range(reads)))
        while not done.is_set():
            states = [c.get(f"/requests/{rid}").json()["status"] for rid in rids]
            if all(s in ("finished", "failed", "denied") for s in states):
                done.set()
            else:
                time.sleep(0.5)
        drained_s = time.perf_counter() - t0
        verified = c.get("/ledger/verify", params={"files": True}).json()
    ledger = Ledger(store / "ledger.sqlite")
    started = [e.request_id for e in ledger.entries(kind="request-started")]
    finished = [e.request_id for e in ledger.entries(kind="request-finished")]
    checks = {
        "all_answered_202": all(code == 202 for code, _ in answers),
        "distinct_ids": len(set(rids)) == submissions,
        "all_finished": states == ["finished"] * submissions,
        "each_started_once": sorted(started) == sorted(rids),
        "each_finished_once": sorted(finished) == sorted(rids),
        "none_failed": not ledger.entries(kind="request-failed"),
        "ledger_verifies": bool(verified["ok"]),
    }
    p50, p50_ref = statistics.median(status_ms), statistics.median(health_ms)
    return {"submissions": submissions, "status_reads": len(status_ms),
            "submit_seconds": round(submit_s, 3), "drain_seconds": round(drained_s, 1),
            "get_request_ms": {"p50": round(p50, 2), "p99": round(pct(status_ms, 0.99), 2)},
            "reference_healthz_ms": {"p50": round(p50_ref, 2),
                                     "p99": round(pct(health_ms, 0.99), 2)},
            "ratio_p50": round(p50 / p50_ref, 2), "files_rehashed": verified["files_checked"],
            "checks": checks, "ok": all(checks.values())}


def cli() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--submissions", type=int, default=20)
    ap.add_argument("--reads", type=int, default=200)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = run(args.submissions, args.reads, Path(tmp))
    print(json.dumps(out, indent=2))
    sys.exit(0 if out["ok"] else 1)


if __name__ == "__main__":
    cli()
