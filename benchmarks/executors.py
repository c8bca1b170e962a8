"""Wall time of one study run serially and on a local pool, back to back, each from a cold
cache of its own (nothing shared, so both build every artefact). Prints one JSON object:
seconds of each, the ratio local / serial (the target is <= 0.65 with 2 workers on 2 cores)
and whether the two runs wrote identical rows, timings aside. Serial uses torch's threads
(the CPU count) and each of the 2 workers one: on a CPU that changes the order of float
reductions, so the rows can differ in their last digits; the largest difference of any
number in any row is reported next to it (``--threads 1`` runs both at one thread a cell,
which makes them identical, at the serial run's expense).

    .venv/bin/python benchmarks/executors.py [--study configs/mnist-quick.yaml]
        [--data-root ../shared/datasets] [--workers 2] [--threads 1] [--set seeds=[0]]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dormant.rows import without_timings
from dormant.store import read_rows

ROOT = Path(__file__).resolve().parents[1]


def run(study: Path, out: Path, cache: Path, extra: list[str]) -> float:
    env = {**os.environ, "DORMANT_CACHE": str(cache)}
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "dormant", "relearn", str(study), "--out", str(out),
                    *extra], env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def _diff(a, b) -> float:
    """The largest absolute difference between the numbers of two rows (inf if the shapes
    differ)."""
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return float("inf")
        return max((_diff(a[k], b[k]) for k in a), default=0.0)
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return float("inf")
        return max((_diff(x, y) for x, y in zip(a, b, strict=True)), default=0.0)
    if isinstance(a, bool) or isinstance(b, bool) or not isinstance(a, int | float) \
            or not isinstance(b, int | float):
        return 0.0 if a == b else float("inf")
    return abs(a - b)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--study", type=Path, default=ROOT / "configs" / "mnist-quick.yaml")
    ap.add_argument("--data-root", default=str(ROOT.parent / "shared" / "datasets"))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--set", action="append", default=[], dest="sets")
    args = ap.parse_args()
    common = ["--data-root", args.data_root, *[f"--set={s}" for s in args.sets],
              *(["--threads", str(args.threads)] if args.threads else [])]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        print("serial ...", file=sys.stderr)
        serial = run(args.study, tmp / "serial", tmp / "cache-serial",
                     [*common, "--executor", "serial"])
        print(f"serial {serial:.1f} s; local ...", file=sys.stderr)
        local = run(args.study, tmp / "local", tmp / "cache-local",
                    [*common, "--executor", "local", "--workers", str(args.workers)])
        rows = {name: {r["cell"]: without_timings(r)
                       for r in read_rows(tmp / name / "results.jsonl")}
                for name in ("serial", "local")}
    diff = max((_diff(rows["serial"][k], rows["local"].get(k, {})) for k in rows["serial"]),
               default=0.0)
    print(json.dumps({
        "study": str(args.study), "sets": args.sets, "cells": len(rows["serial"]),
        "cpus": len(os.sched_getaffinity(0)), "workers": args.workers, "threads": args.threads,
        "serial_s": round(serial, 1), "local_s": round(local, 1),
        "ratio_local_over_serial": round(local / serial, 3),
        "identical_rows": rows["serial"] == rows["local"],
        "max_abs_diff": round(diff, 6),
        "failed_rows": sum(r["status"] != "ok" for r in rows["local"].values()),
    }, indent=1))


if __name__ == "__main__":
    main()
