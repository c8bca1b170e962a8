"""Executors: the same study gives the same rows serially, on a local pool and on Ray; a
worker killed mid-cell is retried and the study ends with every cell exactly once; every
cached artefact is built once however many workers race for it; the results log appends and
survives a torn last line."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml

from dormant.cells import Cell
from dormant.errors import DormantError
from dormant.rows import Row, without_timings
from dormant.store import ModelCache, ResultsLog, read_rows
from dormant.store.cache import append_line

# a small digits study with every kind of upstream artefact: two seeds (the second reuses
# the first seed's calibration), a then: chain sharing its first stage, the analysis
STUDY = {
    "dataset": "digits", "device": "cpu", "seeds": [0, 1], "k": [0, 2],
    "methods": ["finetune", "gradient_ascent",
                {"name": "ga+wd", "method": "gradient_ascent", "then": "weight_distortion"}],
    "unlearn_steps": 40, "attack_steps": 10, "lmc_points": 3, "analysis_size": 200,
}
CELLS = 5 * 2 * 2  # pipelines (2 references + 3) x seeds x k


def _write_study(tmp_path: Path, **changes) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({**STUDY, **changes}))
    return path


def _cli(args: list[str], cache: Path, **kw) -> subprocess.Popen:
    env = {**os.environ, "DORMANT_CACHE": str(cache)}
    return subprocess.Popen([sys.executable, "-m", "dormant", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def _run(args, cache, timeout=600) -> str:
    p = _cli(args, cache)
    out, _ = p.communicate(timeout=timeout)
    assert p.returncode == 0, out
    return out


def _rows(out: Path) -> dict[str, dict]:
    rows = read_rows(out / "results.jsonl")
    keys = [r["cell"] for r in rows]
    assert len(keys) == len(set(keys)), "a cell was written twice"
    return {r["cell"]: without_timings(r) for r in rows}


def _built_once(cache: Path) -> Counter:
    builds = Counter(b["key"] for b in ModelCache(cache).build_log())
    assert builds, "nothing was built"
    assert max(builds.values()) == 1, [k for k, n in builds.items() if n > 1]
    return builds


@pytest.mark.slow
def test_serial_local_and_ray_give_identical_rows(tmp_path):
    pytest.importorskip("ray")
    study = _write_study(tmp_path)
    results = {}
    for name, extra in (("serial", []), ("local", ["--workers", "2"]), ("ray", [])):
        out, cache = tmp_path / name, tmp_path / f"cache-{name}"  # nothing shared between runs
        # one thread a cell everywhere: the CPU thread count changes float reduction order
        _run(["relearn", str(study), "--executor", name, *extra, "--threads", "1",
              "--out", str(out)], cache)
        results[name] = _rows(out)
        assert len(results[name]) == CELLS
        assert all(r["status"] == "ok" for r in results[name].values())
        _built_once(cache)
    assert results["local"] == results["serial"]
    assert results["ray"] == results["serial"]


def _kill_first_worker_mid_cell(out: Path, proc: subprocess.Popen, timeout=300) -> int:
    """SIGKILL the first worker seen starting a cell; returns its pid."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, proc.stdout.read()
        for log in sorted((out / "workers").glob("worker-*.log")):
            for line in log.read_text().splitlines():
                parts = line.split()
                if len(parts) > 3 and parts[1] == "pid" and parts[3] == "start":
                    pid = int(parts[2])
                    os.kill(pid, signal.SIGKILL)
                    return pid
        time.sleep(0.05)
    raise AssertionError("no worker started a cell")


@pytest.mark.slow
@pytest.mark.parametrize("executor", ["local", "ray"])
def test_a_worker_killed_mid_cell_is_retried_and_every_cell_lands_once(tmp_path, executor):
    if executor == "ray":
        pytest.importorskip("ray")
    study = _write_study(tmp_path, seeds=[0], unlearn_steps=300)
    out, cache = tmp_path / "out", tmp_path / "cache"
    proc = _cli(["relearn", str(study), "--executor", executor, "--workers", "2",
                 "--out", str(out)], cache)
    killed = _kill_first_worker_mid_cell(out, proc)
    text, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, text
    rows = _rows(out)
    assert len(rows) == CELLS // 2
    assert all(r["status"] == "ok" for r in rows.values()), rows
    _built_once(cache)
    logs = "".join(p.read_text() for p in (out / "workers").glob("worker-*.log"))
    assert f"pid {killed} start" in logs
    assert f"pid {killed} done" not in logs  # it really died mid-cell
    assert len(list((out / "workers").glob("worker-*.log"))) >= 2


def _build(cache_dir: str, key: str, barrier) -> None:
    from dormant.models import ModelSpec, create_model

    spec = ModelSpec("mlp", 1, 10, 8)
    barrier.wait()

    def train():
        time.sleep(0.5)  # long enough that every racer finds the entry missing
        return create_model(spec, seed=0), {}

    ModelCache(Path(cache_dir)).build_model(key, spec, "cpu", train, {"kind": "race"})


def test_racing_workers_build_a_cached_model_once(tmp_path):
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(3)
    procs = [ctx.Process(target=_build, args=(str(tmp_path), "k1", barrier)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert Counter(b["key"] for b in ModelCache(tmp_path).build_log()) == {"k1": 1}


def test_a_record_is_made_once_and_read_back(tmp_path):
    cache = ModelCache(tmp_path)
    calls = []
    first = cache.build_record("r", "calibration", lambda: calls.append(1) or {"chosen": 2.0})
    again = cache.build_record("r", "calibration", lambda: calls.append(1) or {"chosen": 9.0})
    assert first == again == {"chosen": 2.0}
    assert calls == [1]


def _append_many(path: str, who: int) -> None:
    for i in range(200):
        append_line(Path(path), json.dumps({"cell": f"{who}-{i}", "pad": "x" * 500}))


def test_concurrent_appends_never_interleave(tmp_path):
    path = tmp_path / "results.jsonl"
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_append_many, args=(str(path), w)) for w in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    rows = read_rows(path)
    assert len(rows) == 600
    assert len({r["cell"] for r in rows}) == 600


def test_the_log_appends_and_a_torn_last_line_is_skipped_then_cut(tmp_path):
    log = ResultsLog(tmp_path)
    log.emit({"cell": "a", "status": "ok"})
    size = log.path.stat().st_size
    log.emit({"cell": "b", "status": "ok"})
    assert log.path.read_bytes()[:size] == b'{"cell": "a", "status": "ok"}\n'  # appended
    with open(log.path, "ab") as f:
        f.write(b'{"cell": "c", "sta')  # a writer killed mid-line
    assert [r["cell"] for r in read_rows(log.path)] == ["a", "b"]
    again = ResultsLog(tmp_path)
    assert "c" not in again
    again.emit({"cell": "c", "status": "ok"})
    again.emit({"cell": "c", "status": "ok"})  # a cell is never written twice
    assert [r["cell"] for r in read_rows(log.path)] == ["a", "b", "c"]


def test_a_damaged_middle_line_is_named(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text('{"cell": "a"}\nnot json\n{"cell": "b"}\n')
    with pytest.raises(DormantError, match="line 2 is not a JSON row"):
        read_rows(path)


def test_a_cell_that_raises_becomes_a_failed_row_with_its_error(tmp_path):
    from dormant.cells import Workspace, run_cell
    from dormant.experiments import RelearnSpec
    from dormant.experiments.relearn import RelearnCell

    cell = RelearnCell(key="x", spec=RelearnSpec(dataset="no-such-data"), model_name="mlp",
                       pipeline="finetune", seed=0, forget="random:5", k=0,
                       relearn_set="retain", attack_lr=1e-4, attack_steps=5)
    row = run_cell(cell, Workspace(tmp_path / "cache", tmp_path / "out"))
    assert row.status == "failed"
    assert row.error.startswith("DormantError: ") and "no-such-data" in row.error
    assert (row.method, row.seed, row.k) == ("finetune", 0, 0)
    assert "Traceback" in (tmp_path / "out" / "workers" / "errors.log").read_text()
    assert torch.isfinite(torch.tensor(row.seconds))


def test_the_plan_counts_every_cell_and_artefact_and_more_workers_never_take_longer(digits):
    from dormant.experiments import RelearnSpec
    from dormant.experiments.pipeline import resolve
    from dormant.experiments.plan import measured_costs, plan
    from dormant.experiments.relearn import relearn_cells

    spec = RelearnSpec(**{**STUDY, "methods": STUDY["methods"]})
    costs = measured_costs(spec, digits, resolve(spec), step=0.01)
    p = plan(spec, digits, costs, [1, 2, 4, 64])
    assert p.cells == len(relearn_cells(spec, digits)) == CELLS
    # 2 seeds; 3 non-reference pipelines calibrated once each (on seed 0); 5 analyses a seed
    assert p.artefacts == {"original": 2, "oracle": 2, "calibration": 3, "unlearned": 6,
                           "analysis": 10, "attacks": CELLS}
    spans = [p.makespan[w] for w in (1, 2, 4, 64)]
    assert spans[0] == pytest.approx(p.serial)
    assert all(a >= b for a, b in zip(spans, spans[1:], strict=False))
    # the critical path bounds it from below: seed 0's original, oracle, the dearest
    # calibration, then an attack
    floor = 2 * costs.original + max(
        4 * costs.unlearn["gradient_ascent"] + 4 * costs.unlearn["weight_distortion"],
        4 * costs.unlearn["finetune"]) + costs.attack
    assert spans[-1] >= floor - 1e-9
    # serially every artefact is paid once: a chain's first stage is the method alone's
    ft, ga, wd = (costs.unlearn[m] for m in ("finetune", "gradient_ascent", "weight_distortion"))
    assert p.serial == pytest.approx(4 * costs.original + 4 * (ft + ga + wd) + (ft + ga + wd)
                                     + 10 * costs.analysis + CELLS * costs.attack)


class DyingCell(Cell):
    """A cell whose worker always dies, as under a native crash or the OOM killer (at module
    level, so spawned workers can unpickle it)."""

    def run(self, ws):
        os.kill(os.getpid(), signal.SIGKILL)

    def failed(self, error):
        return Row(cell=self.key, status="failed", error=error, dataset="-", model="-",
                   method="dies", seed=0)


def test_a_cell_whose_worker_always_dies_becomes_a_transient_failed_row(tmp_path):
    from dormant.executors import execute
    from dormant.executors.options import ExecutorOptions

    log = ResultsLog(tmp_path / "out")
    execute([DyingCell(key="d1")], log, tmp_path / "cache", tmp_path / "out",
            ExecutorOptions(executor="local", workers=1, retries=1))
    (row,) = read_rows(log.path)
    assert row["status"] == "failed" and row["transient"] is True
    assert row["error"].startswith("the worker died 2 times")
    assert not log.done("d1")  # a rerun tries it again; a rerun's ok row replaces it
    log.emit({"cell": "d1", "status": "ok"})
    assert log.read() == [{"cell": "d1", "status": "ok"}] and log.done("d1")
    assert len(read_rows(log.path)) == 2


def test_a_diverged_row_is_final_and_a_duplicate_axis_value_is_one_cell(tmp_path):
    from dormant.executors import execute
    from dormant.executors.options import ExecutorOptions

    log = ResultsLog(tmp_path / "out")
    log.emit({"cell": "x", "status": "failed", "error": "unlearning diverged: nan",
              "transient": False})
    ran = []

    class Probe(DyingCell):
        def run(self, ws):
            ran.append(self.key)
            return Row(cell=self.key, dataset="-", model="-", method="m", seed=0)

    execute([Probe(key="x"), Probe(key="y"), Probe(key="y")], log, tmp_path / "cache",
            tmp_path / "out", ExecutorOptions())
    assert ran == ["y"]


def test_a_second_run_into_the_same_folder_is_refused_while_the_first_runs(tmp_path):
    from dormant.store.results import driver_lock

    ctx = mp.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    p = ctx.Process(target=_hold_driver_lock, args=(str(tmp_path), ready, release))
    p.start()
    assert ready.wait(60)
    try:
        with pytest.raises(DormantError, match="being written by a running study"), \
                driver_lock(tmp_path):
            pass
    finally:
        release.set()
        p.join(60)
    with driver_lock(tmp_path):  # free once the first has finished
        pass


def _hold_driver_lock(out: str, ready, release) -> None:
    from dormant.store.results import driver_lock

    with driver_lock(Path(out)):
        ready.set()
        release.wait(60)


def test_packed_workers_take_the_parents_gpu_ids(monkeypatch):
    from dormant.executors import local
    from dormant.executors.options import ExecutorOptions

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")
    n, threads, slots = local._sizes(ExecutorOptions(executor="local", gpus_per_cell=0.5))
    assert (n, slots) == (4, ["4", "4", "5", "5"])
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert local._sizes(ExecutorOptions(gpus_per_cell=1.0))[2] == ["0", "1"]
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    n, threads, slots = local._sizes(ExecutorOptions(workers=2))
    assert slots == [None, None] and threads >= 1
