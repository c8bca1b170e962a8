"""The ``dormant`` command line: a thin typer layer over the Python API."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from dormant.cli_common import (
    DataRoot,
    Dataset,
    Device,
    Download,
    Flag,
    Forget,
    ModelOpt,
    TrainSize,
    _check_data_root,
    _check_out,
    _check_positive,
    _numbers,
    check_sizes,
    console,
    flag_values,
    flags,
    key_values,
    load_spec,
    study_command,
)
from dormant.cli_methods import register as register_methods
from dormant.cli_plan import register as register_plan
from dormant.cli_progress import ProgressBars
from dormant.cli_requests import register as register_requests
from dormant.cli_results import register as register_results
from dormant.cli_root import HELP, root_options, run
from dormant.cli_service import register as register_service
from dormant.errors import DormantError
from dormant.experiments.backdoor_spec import BackdoorSpec
from dormant.experiments.spec import RelearnSpec
from dormant.settings import not_finite

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help=HELP)
register_requests(app)
register_plan(app)
register_results(app)
register_service(app)


def _row_line(r: dict) -> str:
    """One cell: the method with its own strength (the calibrated value, else its lr), then
    the forget accuracy after unlearning -> at the attack's end, and the attack's own lr,
    labelled as such (in 100 columns)."""
    cal = (r.get("calibration") or [{}])[0]
    param, value = (cal["param"], cal["chosen"]) if cal else ("lr", (r.get("hparams") or {}
                                                                     ).get("lr"))
    own = "" if value is None or r.get("method") in ("original", "retrain") else \
        f"{param} {value:.3g}"
    alr = r.get("attack_lr")
    head = (f"  {r.get('method')!s:<15} {own:<10} seed {r.get('seed')} k={r.get('k')!s:<2} "
            f"{r.get('relearn_set')!s:<7}")
    if r.get("status") == "failed":
        return f"{head} FAILED: {r['error']}"
    return (f"{head} forget {r['forget_acc']:5.1f} -> {r['forget_acc_attacked_end']:5.1f} "
            f"(max {r['forget_acc_attacked']:5.1f}), attack lr "
            f"{'-' if alr is None else format(alr, '.0e')}")


def _results_table(rows: list[dict], title: str) -> Table:
    """The verdict table: one line per method and k (retain relearn set, main attack)."""
    from dormant.report import main_verdicts
    from dormant.report.tables import VERDICT_HEADERS, verdict_table

    table = verdict_table(main_verdicts(rows))
    seeds = max((int(r[3]) for r in table.rows), default=0)
    t = Table(title=f"{title} ({seeds} seed{'s' * (seeds != 1)})",
              caption="against the retrain oracle in the same cell, points: gap = forget "
                      "accuracy after unlearning minus the oracle's; excess = attacked forget "
                      "accuracy at the attack's end minus the oracle's (mean ± std over seeds, "
                      "paired 95% interval); r = excess minus gap, what the attack added; the "
                      "report has every column")
    # short headers: the report spells them out; here every column must survive 80 columns
    keep = {"method": ("method", True), "k": ("k", False), "attack steps": ("steps", False),
            "seeds": ("n", False), "gap": ("gap", False), "excess (end)": ("excess", False),
            "95% interval": ("95% CI", False), "r": ("r", False), "verdict": ("verdict", True)}
    if len({r[2] for r in table.rows}) < 2:  # one attack budget: no column for it
        keep.pop("attack steps")
    cols = [i for i, h in enumerate(VERDICT_HEADERS) if h in keep]
    for i in cols:
        head, left = keep[VERDICT_HEADERS[i]]
        t.add_column(head, justify="left" if left else "right", no_wrap=not left,
                     overflow="fold")
    for r in table.rows:
        t.add_row(*(r[i] for i in cols))
    return t


def study_line(spec, out: Path, executor, cells_of) -> str:
    """What a study will run, in one line: its cells (new and already in ``out``), methods,
    seeds, device and executor. ``cells_of(spec, dataset)`` expands the grid (every check of
    the spec runs in it, so bad input stops here, before any training)."""
    from dormant.cli_common import check_cache_dir
    from dormant.data.sources import default_cache_dir
    from dormant.engine import resolve_device
    from dormant.executors.options import ExecutorOptions
    from dormant.experiments.prepare import load_study_data
    from dormant.store.results import final, read_rows

    executor = executor or ExecutorOptions()
    check_cache_dir()
    keys = list(dict.fromkeys(c.key for c in cells_of(spec, load_study_data(
        spec, default_cache_dir()))))
    path = out / "results.jsonl"
    old = {r.get("cell"): r for r in read_rows(path)} if path.is_file() else {}
    done = sum(1 for k in keys if final(old.get(k)))
    methods = ", ".join(str(getattr(m, "name", m)) for m in spec.methods)
    seeds = ",".join(map(str, spec.seeds))
    where = executor.executor
    if executor.executor != "serial" and executor.workers:
        where += f", {executor.workers} workers"
    return (f"{len(keys) - done:,} cells to run ({done:,} already done, {len(keys):,} in all): "
            f"methods {methods}; seeds {seeds}; on {resolve_device(spec.device)}; "
            f"executor {where}")


def _run_study(spec, out: Path, title: str, executor=None, brief: bool = False) -> list[dict]:
    """``brief`` (the demo): one line per stage instead of one per cell."""
    from dormant.cli_rows import StageLines, wrote_line
    from dormant.experiments import run_relearn
    from dormant.experiments.relearn import fit_note, relearn_cells
    from dormant.report import main_verdicts, write_relearn_report
    from dormant.report.relearn import verdict_text

    t0 = time.perf_counter()
    console.print(study_line(spec, out, executor, relearn_cells), highlight=False,
                  markup=False, soft_wrap=True)
    noted: set = set()

    def on_row(r: dict) -> None:
        if brief:
            stages.row(r)
        else:
            bars.say(_row_line(r))
        note = fit_note(r)
        if note and r.get("seed") not in noted:
            noted.add(r.get("seed"))
            bars.say(note)

    with ProgressBars(console, study=True) as bars:
        stages = StageLines(bars, _row_line)
        rows = run_relearn(spec, out, progress=bars, executor=executor, on_row=on_row)
    if brief:
        console.print(stages.summary(time.perf_counter() - t0), highlight=False)
    paths = write_relearn_report(rows, out, title)
    console.print(_results_table(rows, f"{title}: {rows[0]['dataset']}, {rows[0]['model']}, "
                                       f"forget {rows[0]['forget']}"))
    console.print(verdict_text(main_verdicts(rows)))
    if brief:
        console.print(wrote_line(paths, out, time.perf_counter() - t0), highlight=False,
                      markup=False)
    else:
        files = [out / "results.jsonl", *paths.values()]
        console.print(f"wrote {', '.join(map(str, files))} in {time.perf_counter() - t0:.1f} s")
    _exit_if_all_failed(rows, out)
    return rows


def _exit_if_all_failed(rows: list[dict], out: Path) -> None:
    """Exit 1, after the report is written, when no cell of the study succeeded: the run
    measured nothing, and a script must not read it as done."""
    if rows and all(r.get("status") == "failed" for r in rows):
        first = rows[0].get("error") or "no error recorded"
        # a fault of the machine (a full disk, memory) is retried by a rerun; say so
        retry = (f"; fix the cause and rerun into {out}: these cells are retried"
                 if all(r.get("transient") for r in rows) else "")
        # stderr, as every error line: a script reading stdout gets the report's table only
        print(f"error: every one of the {len(rows)} cells failed (the first: {first}); the "
              f"tracebacks are in {out / 'workers' / 'errors.log'}{retry}", file=sys.stderr)
        raise typer.Exit(1)


@app.command()
def demo(
    out: Annotated[Path | None, typer.Option(help="output folder (default runs/demo-<time>)")]
    = None,
    seeds: Annotated[str, typer.Option(
        help="seeds, e.g. 0,1,2: a verdict needs an interval over two or more")] = "0,1,2",
    device: Device = "auto",
) -> None:
    """The main job on the embedded digits data: train, unlearn, attack, report."""
    out = out or Path("runs") / f"demo-{time.strftime('%Y%m%d-%H%M%S')}"
    _check_out(out)
    spec = load_spec(RelearnSpec, given=flag_values(dataset="digits", k=[0, 5], device=device)
                     | {"seeds": ("--seeds", _numbers(seeds, "seeds"))})
    _run_study(spec, out, "dormant demo: relearning after unlearning", brief=True)


STUDY = [*flags("dataset", "download", "train_size", "test_size", "model", "methods", "preset",
                 "seeds"),
         Flag("data_root", parse=_check_data_root), *flags("train_steps", "device")]


@study_command(app, "relearn", RelearnSpec, [*STUDY, *flags(
    "forget", "cscores", "k", "relearn_sets", "unlearn_steps", "attack_steps", "attack_lr",
    "calibrate", "stop", "analysis", "lmc_points", "analysis_size")])
def relearn_cmd(spec: RelearnSpec, out: Path, executor) -> None:
    """The relearning study on any dataset: unlearn, attack, report (resumable)."""
    _run_study(spec, out, "Relearning study", executor)


def _scans(text: str | None) -> dict:
    if text is None:
        return {}
    from dormant.defenses import available_defenses

    known = available_defenses()
    names = {t.strip() for t in text.split(",") if t.strip()} - {"none"}
    unknown = sorted(names - set(known))
    if unknown:
        raise DormantError(f"--scans: unknown defense {unknown[0]!r}; use "
                           f"{', '.join(known)} or none")
    # only the defenses left out are switched off: a named one keeps the study's own config
    return {k: False for k in known if k not in names}


def _backdoor_line(r: dict) -> str:
    head = f"  {r.get('method')!s:<18} {r.get('condition')!s:<13} seed {r.get('seed')}"
    if r.get("status") == "failed":
        return f"{head}  FAILED: {r['error']}"
    return (f"{head}  ASR {r['asr_before']:5.1f} -> {r['asr_after']:5.1f}   clean "
            f"{r['clean_acc_before']:5.1f} -> {r['clean_acc_after']:5.1f}")


@study_command(app, "backdoor", BackdoorSpec, [*STUDY, *flags(
    "conditions", "target", "request", "strategy", "threat", "public", "surrogate_public",
    "counterweights", "poison_choice", "retrain_seeds", "match_budget", "arm",
    trigger="trigger.kind",
    amplitude="trigger.amplitude", trigger_size="trigger.size", poisons="poisons_per_class"),
    Flag("defenses", "scans", parse=_scans)])
def backdoor_cmd(spec: BackdoorSpec, out: Path, executor) -> None:
    """The clean-unlearning backdoor study: plant, request, unlearn, scan, report
    (resumable)."""
    from dormant.experiments import run_backdoor
    from dormant.experiments.backdoor import backdoor_cells
    from dormant.report.backdoor import backdoor_verdict, verdict_text, write_backdoor_report

    t0 = time.perf_counter()
    console.print(study_line(spec, out, executor, backdoor_cells), highlight=False,
                  markup=False, soft_wrap=True)
    with ProgressBars(console) as bars:
        rows = run_backdoor(spec, out, progress=bars, executor=executor,
                            on_row=lambda r: bars.say(_backdoor_line(r)),
                            on_budget=lambda s, p: bars.say(f"seed {s}: {p.line()}"))
    paths = write_backdoor_report(rows, out)
    console.print(verdict_text(backdoor_verdict(rows)))
    console.print(f"wrote {', '.join(str(p) for p in [out / 'results.jsonl', *paths.values()])} "
                  f"in {time.perf_counter() - t0:.1f} s")
    _exit_if_all_failed(rows, out)


@app.command()
def train(
    dataset: Dataset = "digits",
    out: Annotated[Path, typer.Option(help="output folder")] = Path("runs/train"),
    model: ModelOpt = None,
    data_root: DataRoot = None,
    download: Download = False,
    train_size: TrainSize = None,
    steps: Annotated[int | None, typer.Option(help="training steps (default: per dataset)")] = None,
    forget: Annotated[str | None, typer.Option(help="canary:N plants N mislabelled images")] = None,
    seed: int = 0,
    device: Device = "auto",
    store: Annotated[Path | None, typer.Option(help="also add the model to this store")] = None,
    name: Annotated[str | None, typer.Option(help="its name in the store")] = None,
    sisa: Annotated[str | None, typer.Option(
        help="train a SISA ensemble: shards=S,slices=R[,aggregate=mean|vote] (see dormant "
             "methods: sisa)")] = None,
    new_lineage: Annotated[str | None, typer.Option(
        help="with --store: why this model replaces a name that has promoted deletions (a new "
             "lineage, recorded in the ledger)")] = None,
) -> None:
    """Train a model with the dataset's memorising recipe and save it (safetensors)."""
    from dormant.experiments.single import train_model
    from dormant.requests import ModelStore
    from dormant.requests.store import check_name

    sisa_values = parse_sisa(sisa) if sisa is not None else None
    spec = load_spec(RelearnSpec, given=flag_values(
        dataset=dataset, data_root=_check_data_root(data_root), download=download,
        train_size=train_size, model=model, forget=forget, device=device)
        | {"train_steps": ("--steps", steps)})
    _check_out(out)
    check_sizes(spec)
    if (store is None) != (name is None):
        raise DormantError("--store and --name go together: name the model the store keeps")
    if new_lineage is not None and store is None:
        raise DormantError("--new-lineage goes with --store and --name: it starts a new "
                           "lineage of a name in a store")
    if new_lineage is not None and not new_lineage.strip():
        raise DormantError("--new-lineage is empty; say why this model replaces the lineage, "
                           "e.g. 'retrained without every deleted id'")
    if store is not None:
        check_name(name)
        there = Path(store).resolve()
        if Path(out).resolve() == there or there in Path(out).resolve().parents:
            raise DormantError(f"--out {out} is inside the model store {store}; only the "
                               "store writes there: give a path outside it")
        # a folder that is not a store, and a re-add the store would refuse, fail before
        # training
        st = ModelStore(store, create=True)
        if new_lineage is None:
            st.check_addable(name)
    with ProgressBars(console) as bars:
        path, m = train_model(spec, out, seed=seed, progress=bars, sisa=sisa_values)
    console.print(f"saved {path}: fits {m['train_fit_acc']:.1f}% of train, "
                  f"test {m['test_acc']:.1f}%, {m['seconds']:.1f} s")
    if store is not None:
        from dormant.requests.deleters import add_model
        from dormant.tracking.cli import mirror_after

        st = ModelStore(store)
        v = add_model(st, name, path, new_lineage=new_lineage)
        console.print(f"added to {store} as {name} v{v.version} (ledger row {v.seq})")
        mirror_after(st, [name])


def parse_sisa(text: str) -> dict:
    """``--sisa shards=5,slices=4``: the ``sisa`` method's hyper-parameters, checked."""
    from dormant.unlearn import make_hparams

    values = key_values(text.split(","), "--sisa", "shards=5,slices=4")
    make_hparams("sisa", values)
    return values


@app.command("unlearn")
def unlearn_cmd(
    checkpoint: Annotated[Path, typer.Argument(help="a .safetensors checkpoint")],
    method: Annotated[str, typer.Option(help="see dormant methods")],
    dataset: Dataset = "digits",
    forget: Forget = None,
    out: Annotated[Path, typer.Option(help="output folder")] = Path("runs/unlearn"),
    model: ModelOpt = None,
    data_root: DataRoot = None,
    train_size: TrainSize = None,
    cscores: Annotated[Path | None, typer.Option(help="C-score .npz for atypical sets")] = None,
    steps: Annotated[int | None, typer.Option(help="unlearning steps")] = None,
    lr: Annotated[float | None, typer.Option(help="unlearning learning rate")] = None,
    preset: Annotated[str | None, typer.Option(
        help="the method's preset, see dormant methods --preset (default: paper)")] = None,
    seed: int = 0,
    device: Device = "auto",
) -> None:
    """Apply an unlearning method to a saved checkpoint."""
    from dormant.errors import need_file
    from dormant.experiments.single import unlearn_checkpoint
    from dormant.unlearn import get_method, get_preset, make_hparams

    get_method(method)
    need_file(checkpoint, "checkpoint", suffix=".safetensors")
    _check_positive(steps=steps)
    if lr is not None and not_finite(lr):
        raise DormantError(f"--lr: must be a finite number, got {lr}")
    spec = load_spec(RelearnSpec, given=flag_values(
        dataset=dataset, data_root=_check_data_root(data_root), train_size=train_size,
        model=model, forget=forget, cscores=str(cscores) if cscores else None,
        device=device))
    _check_out(out)
    check_sizes(spec)
    overrides = {k: v for k, v in (("steps", steps), ("lr", lr)) if v is not None}
    get_preset(method, preset)  # bad values fail here, before the progress display starts
    make_hparams(method, overrides)
    with ProgressBars(console) as bars:
        path, m = unlearn_checkpoint(spec, checkpoint, method, out, seed=seed,
                                     overrides=overrides, preset=preset, progress=bars,
                                     announce=bars.say)
    console.print(f"saved {path}: held-out forget {m['forget_acc_before']:.1f} -> "
                  f"{m['forget_acc']:.1f}%, retain {m['retain_acc']:.1f}%, "
                  f"test {m['test_acc']:.1f}%")


register_methods(app)


app.callback()(root_options)


def main(argv: list[str] | None = None) -> int:
    """Entry point: bad input becomes one line on stderr and exit code 2 (``--debug``,
    anywhere on the line, raises it instead)."""
    return run(app, argv)


def entry() -> None:
    sys.exit(main())
