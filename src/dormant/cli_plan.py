"""``dormant plan``: cells, the artefact graph and the expected makespan of a study."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from dormant.cli_common import DataRoot, SetOpt, _check_data_root, _numbers, console, load_spec
from dormant.errors import DormantError

MAX_WORKERS = 100_000
"""The simulation keeps one clock per worker: a count of 10^12 would exhaust the memory."""


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.1f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def _plan_data(spec, cache_dir: Path, load):
    """The study's data when it is here; else, for a dataset with published sizes, a stand-in
    with its label counts and image shape (a plan counts and times, it trains nothing), said
    in one line. Nothing is downloaded, whatever the study's ``download`` says."""
    from dormant.data.known_sizes import stand_in

    try:
        return load(spec.model_copy(update={"download": False}), cache_dir)
    except DormantError as e:
        ds = stand_in(spec.dataset, spec.train_size, spec.test_size)
        if ds is None:
            raise
        console.print(f"note: {e}. This plan counts and times from {spec.dataset}'s "
                      f"published sizes instead ({len(ds.y_train):,} training and "
                      f"{len(ds.y_test):,} test images of {'x'.join(map(str, ds.image_shape))}"
                      "); the run itself needs the data", markup=False, highlight=False,
                      soft_wrap=True)
        return ds


def plan_cmd(
    study: Annotated[Path, typer.Argument(help="YAML relearning study file")],
    workers: Annotated[str, typer.Option(help="worker or GPU counts to plan for, e.g. 1,8,64")]
    = "1,2,8,64",
    from_run: Annotated[Path | None, typer.Option(
        "--from", help="an earlier run's output folder: its measured times (same cache)")]
    = None,
    step_seconds: Annotated[float | None, typer.Option(
        help="seconds of one training step measured elsewhere (e.g. on the target GPU)")]
    = None,
    data_root: DataRoot = None,
    set_: SetOpt = None,
) -> None:
    """How many cells, which artefacts, and how long on W workers (nothing is trained)."""
    from dormant.data.sources import default_cache_dir
    from dormant.experiments import RelearnSpec
    from dormant.experiments.pipeline import resolve
    from dormant.experiments.plan import earlier_costs, measured_costs, plan
    from dormant.experiments.prepare import load_study_data

    counts = _numbers(workers, "workers")
    if not counts or min(counts) < 1 or max(counts) > MAX_WORKERS:
        shown = workers if len(workers) <= 60 else f"{workers[:60]}..."
        raise DormantError(f"--workers takes integers from 1 to {MAX_WORKERS:,}, e.g. 1,8,64; "
                           f"got {shown!r}")
    if step_seconds is not None and not step_seconds > 0:
        raise DormantError(f"--step-seconds must be a positive number, got {step_seconds}")
    spec = load_spec(RelearnSpec, study, {"data_root": ("--data-root",
                                                         _check_data_root(data_root))}, set_)
    cache_dir = default_cache_dir()
    ds = _plan_data(spec, cache_dir, load_study_data)
    pipelines = resolve(spec)
    costs = (earlier_costs(spec, ds, pipelines, from_run, cache_dir) if from_run
             else measured_costs(spec, ds, pipelines, step=step_seconds))
    p = plan(spec, ds, costs, counts)
    console.print(f"[bold]{escape(str(study))}[/]: {p.cells} cells", markup=True)
    t = Table(title="artefacts the cells build (each once)")
    t.add_column("kind")
    t.add_column("count", justify="right")
    for kind, n in p.artefacts.items():
        t.add_row(kind, str(n))
    console.print(t)
    src = ("given --step-seconds" if step_seconds else costs.source)
    console.print(f"durations: {src}; " + ", ".join(f"{k} {v}" for k, v in costs.inputs.items()))
    console.print(f"  original {_duration(costs.original)}, attack {_duration(costs.attack)}, "
                  f"analysis {_duration(costs.analysis)}, unlearning "
                  + ", ".join(f"{m} {_duration(s)}" for m, s in sorted(costs.unlearn.items())))
    m = Table(title="expected makespan")
    for col in ("workers", "makespan", "speed-up", "efficiency"):
        m.add_column(col, justify="right")
    for w, s in p.makespan.items():
        m.add_row(str(w), _duration(s), f"{p.serial / s:.2f}x", f"{p.serial / s / w:.0%}")
    console.print(m)


def register(app: typer.Typer) -> None:
    app.command("plan")(plan_cmd)
