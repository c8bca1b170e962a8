"""The ``dormant`` command line: a thin typer layer over the Python API."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated

import typer
import yaml
from pydantic import ValidationError
from rich.table import Table

from dormant.cli_common import (  # noqa: F401 - re-exported option types
    DataRoot,
    Dataset,
    Device,
    Download,
    Forget,
    Methods,
    ModelOpt,
    Seeds,
    StudyDataset,
    StudyDownload,
    StudyFile,
    TestSize,
    TrainSize,
    _check_data_root,
    _check_out,
    _check_positive,
    _numbers,
    console,
)
from dormant.cli_progress import ProgressBars
from dormant.cli_requests import register as register_requests
from dormant.errors import DormantError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Test whether machine unlearning really removes what it claims to.")
register_requests(app)


def _row_line(r: dict) -> str:
    head = (f"  {r['method']:<18} seed {r['seed']} k={r['k']:<3} {r['relearn_set']:<8} "
            f"lr {r['attack_lr']:.0e}")
    if r.get("status") == "failed":
        return f"{head}  FAILED: {r['reason']}"
    return (f"{head}  forget {r['forget_acc']:5.1f} -> {r['forget_acc_attacked_end']:5.1f} at "
            f"the attack's end (max {r['forget_acc_attacked']:5.1f})")


def _spec(study: Path | None = None, *, kind: str = "relearn", nested: dict | None = None,
          **flags):
    from dormant.experiments import BackdoorSpec, RelearnSpec

    base: dict = {}
    if study is not None:
        if not study.is_file():
            raise DormantError(f"study file {study} does not exist")
        try:
            base = yaml.safe_load(study.read_text()) or {}
        except yaml.YAMLError as e:
            first = str(e).splitlines()[0]
            raise DormantError(f"study file {study} is not valid YAML: {first}") from None
        if not isinstance(base, dict):
            raise DormantError(f"study file {study} must be a mapping of keys to values")
    given = {k: v for k, v in flags.items() if v is not None}
    base.update(given)
    aliases = {}
    # nested: {key: {field: (value, flag name)}} merged into the study's own mapping
    for key, fields in (nested or {}).items():
        set_ = {name: v for name, (v, _) in fields.items() if v is not None}
        if set_:
            old = base.get(key)
            base[key] = {**(old if isinstance(old, dict) else {}), **set_}
            aliases.update({(key, name): fields[name][1] for name in set_})
    try:
        return (BackdoorSpec if kind == "backdoor" else RelearnSpec)(**base)
    except ValidationError as e:
        raise DormantError(_spec_error(e, study, given, aliases)) from None


# study keys whose flag is named differently
_FLAG_NAMES = {"poisons_per_class": "poisons"}


def _spec_error(e: ValidationError, study: Path | None, flags: dict,
                aliases: dict | None = None) -> str:
    """Name the flag, or the study file's key, that is wrong; ``aliases`` maps a nested key
    (``("trigger", "amplitude")``) to the flag that set it."""
    aliases = aliases or {}
    errs = e.errors()
    # a methods item is a name or a mapping: report the mapping's own complaint, not "not str"
    err = next((x for x in errs if "MethodEntry" in x["loc"]), errs[0])
    loc = [str(p) for p in err["loc"] if p not in ("MethodEntry", "str")]
    msg = err["msg"].removeprefix("Value error, ")
    if tuple(loc[:2]) in aliases:
        return f"--{aliases[tuple(loc[:2])]}: {msg}"
    if loc and loc[0] in flags and loc[0] != "trigger":
        return f"--{_FLAG_NAMES.get(loc[0], loc[0]).replace('_', '-')}: {msg}"
    return f"{study or 'options'}: key {'.'.join(loc) or 'study'!r}: {msg}"


def _results_table(rows: list[dict], title: str) -> Table:
    """The verdict table: one line per method and k (retain relearn set, main attack)."""
    from dormant.report import main_verdicts
    from dormant.report.tables import verdict_table

    table = verdict_table(main_verdicts(rows))
    seeds = max((int(r[2]) for r in table.rows), default=0)
    t = Table(title=f"{title} ({seeds} seed{'s' * (seeds != 1)})",
              caption="against the retrain oracle in the same cell, points: gap = forget "
                      "accuracy after unlearning minus the oracle's; excess = attacked forget "
                      "accuracy at the attack's end minus the oracle's (mean ± std over seeds, "
                      "paired 95% interval); max = the same with the curves' maxima")
    # short headers: the report spells them out; here every column must survive 80 columns
    for head, left in (("method", True), ("k", False), ("n", False), ("gap", False),
                       ("excess", False), ("95% CI", False), ("max", False),
                       ("verdict", True)):
        t.add_column(head, justify="left" if left else "right", no_wrap=not left,
                     overflow="fold")
    for r in table.rows:
        t.add_row(*r)
    return t


def _run_study(spec, out: Path, title: str) -> list[dict]:
    from dormant.experiments import run_relearn
    from dormant.report import main_verdicts, write_relearn_report
    from dormant.report.relearn import verdict_text

    t0 = time.perf_counter()
    with ProgressBars(console) as bars:
        rows = run_relearn(spec, out, progress=bars,
                           on_row=lambda r: bars.bars.console.print(_row_line(r)))
    paths = write_relearn_report(rows, out, title)
    console.print(_results_table(rows, f"{title}: {rows[0]['dataset']}, {rows[0]['model']}, "
                                       f"forget {rows[0]['forget']}"))
    console.print(verdict_text(main_verdicts(rows)))
    console.print(f"wrote {', '.join(str(p) for p in [out / 'results.jsonl', *paths.values()])} "
                  f"in {time.perf_counter() - t0:.1f} s")
    return rows


@app.command()
def demo(
    out: Annotated[Path | None, typer.Option(help="output folder (default runs/demo-<time>)")]
    = None,
    seed: int = 0,
    device: Device = "auto",
) -> None:
    """The main job on the embedded digits data: train, unlearn, attack, report."""
    out = out or Path("runs") / f"demo-{time.strftime('%Y%m%d-%H%M%S')}"
    _check_out(out)
    spec = _spec(dataset="digits", seeds=[seed], device=device, k=[0, 5])
    _run_study(spec, out, "dormant demo: relearning after unlearning")


@app.command("relearn")
def relearn_cmd(
    study: StudyFile = None,
    dataset: StudyDataset = None,
    data_root: DataRoot = None,
    download: StudyDownload = None,
    train_size: TrainSize = None,
    test_size: TestSize = None,
    model: ModelOpt = None,
    forget: Forget = None,
    cscores: Annotated[Path | None, typer.Option(help="C-score .npz for atypical sets")] = None,
    methods: Methods = None,
    k: Annotated[str | None, typer.Option(help="leaked examples, e.g. 0,5")] = None,
    seeds: Seeds = None,
    relearn_sets: Annotated[str | None, typer.Option(
        help="comma-separated: retain, forget-only, test, test+retain-class")] = None,
    train_steps: Annotated[int | None, typer.Option()] = None,
    unlearn_steps: Annotated[int | None, typer.Option()] = None,
    attack_steps: Annotated[str | None, typer.Option(help="attack budgets, e.g. 100,400")]
    = None,
    attack_lr: Annotated[str | None, typer.Option(help="attack learning rates, e.g. 1e-5,1e-4")]
    = None,
    calibrate: Annotated[str | None, typer.Option(
        help="oracle: pick each method's strength so it forgets as much as the oracle on the "
             "leakable ids (default); none: run the values as given")] = None,
    stop: Annotated[str | None, typer.Option(
        help="budget: every method runs its full budget (default); oracle-leakable: stop "
             "once the leakable ids reach the oracle's accuracy")] = None,
    analysis: Annotated[bool | None, typer.Option(
        help="linear mode connectivity and membership inference for every model")] = None,
    lmc_points: Annotated[int | None, typer.Option(help="points on each LMC line")] = None,
    analysis_size: Annotated[int | None, typer.Option(
        help="retain and test images the analysis evaluates")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda")] = None,
    out: Annotated[Path | None, typer.Option(help="output folder")] = None,
) -> None:
    """The relearning study on any dataset: unlearn, attack, report (resumable)."""
    _check_positive(train_steps=train_steps, unlearn_steps=unlearn_steps,
                    train_size=train_size, test_size=test_size)
    _check_data_root(data_root)
    spec = _spec(
        study, dataset=dataset, data_root=str(data_root) if data_root else None,
        download=download, train_size=train_size, test_size=test_size, model=model,
        forget=forget, cscores=str(cscores) if cscores else None,
        methods=[m.strip() for m in methods.split(",")] if methods is not None else None,
        k=_numbers(k, "k"), seeds=_numbers(seeds, "seeds"),
        relearn_sets=[s.strip() for s in relearn_sets.split(",")] if relearn_sets else None,
        train_steps=train_steps, unlearn_steps=unlearn_steps,
        attack_steps=_numbers(attack_steps, "attack-steps"),
        attack_lr=_numbers(attack_lr, "attack-lr", float), calibrate=calibrate, stop=stop,
        analysis=analysis, lmc_points=lmc_points,
        analysis_size=analysis_size, device=device,
    )
    out = out or Path("runs") / f"relearn-{time.strftime('%Y%m%d-%H%M%S')}"
    _check_out(out)
    _run_study(spec, out, "Relearning study")


@app.command("backdoor")
def backdoor_cmd(
    study: StudyFile = None,
    dataset: StudyDataset = None,
    data_root: DataRoot = None,
    download: StudyDownload = None,
    train_size: TrainSize = None,
    test_size: TestSize = None,
    model: ModelOpt = None,
    methods: Methods = None,
    seeds: Seeds = None,
    conditions: Annotated[str | None, typer.Option(
        help="comma-separated: attack, random-clean, unpoisoned, none, badnets, blended")] = None,
    trigger: Annotated[str | None, typer.Option(help="patch, blend, noise or sinusoid")] = None,
    amplitude: Annotated[float | None, typer.Option(help="trigger amplitude in [0, 1]")] = None,
    trigger_size: Annotated[int | None, typer.Option(help="patch side in pixels")] = None,
    target: Annotated[int | None, typer.Option(help="the backdoor's target class")] = None,
    poisons: Annotated[int | None, typer.Option(help="poisoned images per source class")]
    = None,
    request: Annotated[int | None, typer.Option(help="clean images in the deletion request")]
    = None,
    strategy: Annotated[str | None, typer.Option(
        help="request pick: margin, stamped-margin or random")] = None,
    match_budget: Annotated[float | None, typer.Option(
        help="times the attack's steps the matched random control may run")] = None,
    scans: Annotated[str | None, typer.Option(
        help="defenses run on every model: comma-separated nc, cd, ibau, or none")] = None,
    train_steps: Annotated[int | None, typer.Option()] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda")] = None,
    out: Annotated[Path | None, typer.Option(help="output folder")] = None,
) -> None:
    """The clean-unlearning backdoor study: plant, request, unlearn, scan, report
    (resumable)."""
    from dormant.experiments import run_backdoor
    from dormant.report.backdoor import backdoor_verdict, verdict_text, write_backdoor_report

    _check_positive(train_steps=train_steps, train_size=train_size, test_size=test_size)
    _check_data_root(data_root)
    spec = _spec(
        study, kind="backdoor", dataset=dataset,
        data_root=str(data_root) if data_root else None, download=download,
        train_size=train_size, test_size=test_size, model=model,
        methods=[m.strip() for m in methods.split(",")] if methods is not None else None,
        seeds=_numbers(seeds, "seeds"),
        conditions=[c.strip() for c in conditions.split(",")] if conditions else None,
        target=target, poisons_per_class=poisons, request=request, strategy=strategy,
        match_budget=match_budget, train_steps=train_steps, device=device,
        nested={"trigger": {"kind": (trigger, "trigger"), "amplitude": (amplitude, "amplitude"),
                            "size": (trigger_size, "trigger-size")},
                "defenses": _scans(scans)},
    )
    out = out or Path("runs") / f"backdoor-{time.strftime('%Y%m%d-%H%M%S')}"
    _check_out(out)
    t0 = time.perf_counter()
    with ProgressBars(console) as bars:
        rows = run_backdoor(spec, out, progress=bars,
                            on_row=lambda r: bars.bars.console.print(_backdoor_line(r)))
    paths = write_backdoor_report(rows, out)
    console.print(verdict_text(backdoor_verdict(rows)))
    console.print(f"wrote {', '.join(str(p) for p in [out / 'results.jsonl', *paths.values()])} "
                  f"in {time.perf_counter() - t0:.1f} s")


def _scans(text: str | None) -> dict:
    if text is None:
        return {}
    names = {t.strip() for t in text.split(",") if t.strip()} - {"none"}
    unknown = sorted(names - {"nc", "cd", "ibau"})
    if unknown:
        raise DormantError(f"--scans: unknown defense {unknown[0]!r}; use nc, cd, ibau or none")
    return {k: (k in names, "scans") for k in ("nc", "cd", "ibau")}


def _backdoor_line(r: dict) -> str:
    head = f"  {r['method']:<18} {r['condition']:<13} seed {r['seed']}"
    if r.get("status") == "failed":
        return f"{head}  FAILED: {r['error']}"
    return (f"{head}  ASR {r['asr_before']:5.1f} -> {r['asr_after']:5.1f}   clean "
            f"{r['clean_acc_before']:5.1f} -> {r['clean_acc_after']:5.1f}")


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
) -> None:
    """Train a model with the dataset's memorising recipe and save it (safetensors)."""
    from dormant.experiments.single import train_model
    from dormant.requests import ModelStore
    from dormant.requests.store import check_name

    _check_positive(steps=steps, train_size=train_size)
    _check_data_root(data_root)
    _check_out(out)
    if (store is None) != (name is None):
        raise DormantError("--store and --name go together: name the model the store keeps")
    if store is not None:
        check_name(name)
        ModelStore(store, create=True)  # a folder that is not a store fails before training
    spec = _spec(dataset=dataset, data_root=str(data_root) if data_root else None,
                 download=download, train_size=train_size, model=model, forget=forget,
                 train_steps=steps, device=device)
    with ProgressBars(console) as bars:
        path, m = train_model(spec, out, seed=seed, progress=bars)
    console.print(f"saved {path}: fits {m['train_fit_acc']:.1f}% of train, "
                  f"test {m['test_acc']:.1f}%, {m['seconds']:.1f} s")
    if store is not None:
        v = ModelStore(store).add(name, path)
        console.print(f"added to {store} as {name} v{v.version} (ledger row {v.seq})")


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
    seed: int = 0,
    device: Device = "auto",
) -> None:
    """Apply an unlearning method to a saved checkpoint."""
    from dormant.experiments.single import unlearn_checkpoint
    from dormant.unlearn import get_method

    get_method(method)
    _check_positive(steps=steps, train_size=train_size)
    _check_data_root(data_root)
    _check_out(out)
    overrides = {k: v for k, v in (("steps", steps), ("lr", lr)) if v is not None}
    spec = _spec(dataset=dataset, data_root=str(data_root) if data_root else None,
                 train_size=train_size, model=model, forget=forget,
                 cscores=str(cscores) if cscores else None, device=device)
    with ProgressBars(console) as bars:
        path, m = unlearn_checkpoint(spec, checkpoint, method, out, seed=seed,
                                     overrides=overrides, progress=bars)
    console.print(f"saved {path}: held-out forget {m['forget_acc_before']:.1f} -> "
                  f"{m['forget_acc']:.1f}%, retain {m['retain_acc']:.1f}%, "
                  f"test {m['test_acc']:.1f}%")


@app.command()
def methods() -> None:
    """List the unlearning methods with their defaults and sources."""
    from dormant.unlearn import available_methods, get_method

    t = Table(title="unlearning methods")
    for col in ("name", "defaults", "what and source"):
        t.add_column(col)
    for name in available_methods():
        info = get_method(name)
        defaults = ", ".join(f"{k}={v}" for k, v in info.defaults().items()) or "-"
        t.add_row(name, defaults, info.summary)
    console.print(t)


def main(argv: list[str] | None = None) -> int:
    """Entry point: bad input becomes one line on stderr and exit code 2."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    args = [a for a in args if a != "--debug"]
    try:
        app(args=args, prog_name="dormant")  # usage errors exit 2 inside typer
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 0
    except DormantError as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def entry() -> None:
    sys.exit(main())
