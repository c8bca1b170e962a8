"""``dormant forget``, ``dormant audit``, ``dormant store`` and ``dormant ledger``: deletion
requests as a platform team runs them, over ``dormant.requests``."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from dormant.cli_common import (
    DataRoot,
    Device,
    TrainSize,
    _check_data_root,
    _check_out,
    check_file_out,
    console,
    flag_values,
    key_values,
    load_spec,
)
from dormant.cli_progress import ProgressBars
from dormant.errors import DormantError, need_file
from dormant.tracking.cli import mirror_after, store_mirror

store_app = typer.Typer(no_args_is_help=True, help="The model store: add and list versions.")
ledger_app = typer.Typer(no_args_is_help=True,
                         help="The tamper-evident ledger: verify, head, show, export.")

StoreDir = Annotated[Path, typer.Option("--store", help="model store folder")]
LedgerOpt = Annotated[Path | None, typer.Option(
    "--ledger", help="ledger file (default: the store's ledger.sqlite)")]
DataName = Annotated[str, typer.Option("--dataset", help="the dataset the model was trained on")]
Ids = Annotated[Path, typer.Option("--ids", help="training ids to delete: text or .npy")]
PolicyOpt = Annotated[Path | None, typer.Option("--policy", help="policy YAML (thresholds)")]
LedgerArg = Annotated[Path, typer.Argument(help="a ledger.sqlite, or a store folder")]
NewLineage = Annotated[str | None, typer.Option(
    help="why this checkpoint replaces a name that has promoted deletions (a new lineage, "
         "recorded in the ledger), e.g. 'retrained without every deleted id'")]


def _dataset(dataset: str, data_root: Path | None, train_size: int | None):
    from dormant.data.sources import default_cache_dir
    from dormant.experiments.prepare import load_study_data
    from dormant.experiments.spec import RelearnSpec

    spec = load_spec(RelearnSpec, given=flag_values(
        dataset=dataset, data_root=_check_data_root(data_root), train_size=train_size))
    return load_study_data(spec, default_cache_dir())


def _open_ledger(path: Path):
    from dormant.requests import Ledger

    if path.is_dir():
        path = path / "ledger.sqlite"
    return Ledger(path, create=False)


def _summary(rec: dict) -> Table:
    t = Table(title=f"verdict: {rec['verdict'].upper()}"
                    f"{'  (promoted)' if rec['promoted'] else '  (not promoted)'}")
    for col in ("check", "value", "warn", "fail", "status", "detail"):
        t.add_column(col, justify="right" if col in ("value", "warn", "fail") else "left")
    style = {"pass": "green", "warn": "yellow", "fail": "red"}
    for c in rec["checks"]:
        t.add_row(c["name"], _num(c["value"]), _num(c["warn"]), _num(c["fail"]),
                  Text(c["status"], style=style[c["status"]]), c["detail"])
    return t


def _num(v) -> str:
    return "-" if v is None or v != v else f"{v:.3g}"


def forget(
    store: StoreDir,
    model: Annotated[str, typer.Option("--model", help="NAME or NAME@VERSION in the store")],
    ids: Annotated[list[Path], typer.Option(
        "--ids", help="training ids to delete: a text or .npy file; repeat it, or give a "
                      "folder of such files, to process several requests as one batch")],
    requester: Annotated[str, typer.Option(help="who asked for the deletion")],
    reason: Annotated[str, typer.Option(help="why, in a few words")],
    dataset: DataName = "digits",
    data_root: DataRoot = None,
    train_size: TrainSize = None,
    method: Annotated[str | None, typer.Option(
        help="unlearning method (default: sisa on a SISA version, else retrain: the exact "
             "ones)")] = None,
    hparam: Annotated[list[str] | None, typer.Option(
        help="a method hyper-parameter, key=value; repeat it")] = None,
    preset: Annotated[str | None, typer.Option(
        help="the method's preset, see dormant methods --preset (default: backdoor)")] = None,
    policy: PolicyOpt = None,
    accept_warnings: Annotated[bool, typer.Option(
        help="promote a new version whose verdict is warn")] = False,
    ledger: LedgerOpt = None,
    seed: int = 0,
    device: Device = "auto",
) -> None:
    """Process deletion requests: record, unlearn, check, judge, record the outcome. Several
    --ids (or a folder of ids files) are one batch: one unlearning run for all of them, and
    each request's own ledger rows, checks, verdict and report."""
    from dormant.data.forget import read_ids
    from dormant.requests import ModelStore, Request, load_policy, parse_ref, process_batch
    from dormant.requests.forget import RequestFailed, check_text, method_of
    from dormant.unlearn import get_preset, make_hparams

    check_text("requester", requester, "who asked for the deletion, e.g. alice")
    check_text("reason", reason, "why, in a few words, e.g. 'GDPR art. 17'")
    name, version = parse_ref(model)
    pol = load_policy(policy)
    hp = key_values(hparam, "--hparam", "steps=200")
    # a bad method, preset or hyper-parameter fails before anything is opened, and a method
    # left to the version's kind once the store says which; the preset is resolved once the
    # data is there
    if method is not None:
        get_preset(method, preset)
        make_hparams(method, hp)
    files = ids_files(ids)
    st = ModelStore(store, ledger)
    chosen = method_of(method, hp, st.resolve(name, version))
    get_preset(chosen, preset)
    make_hparams(chosen, hp)
    ds = _dataset(dataset, data_root, train_size)
    reqs = [Request(name, read_ids(f, len(ds.y_train)), requester, reason, version, method, hp,
                    accept_warnings, seed, preset) for f in files]
    try:
        with ProgressBars(console) as bars:
            done = process_batch(
                st, ds, reqs, pol, device=device, progress=bars,
                on_stage=lambda s: bars.bars.console.print(s, highlight=False),
                on_wait=lambda: bars.bars.console.print(
                    f"waiting for the store lock ({store / '.lock'}): another request is "
                    "running"))
    except RequestFailed as e:
        # not bad input but a run that failed (a diverging method, a full disk, SIGTERM):
        # exit 1 (128 + the signal's number), one line; the ledger holds its request-failed row
        print(f"error: {e}", file=sys.stderr)
        raise typer.Exit(e.exit_code) from None
    for f, (rec, out) in zip(files, done, strict=True):
        console.print(_summary(rec))
        to = f"v{rec['to_version']}"
        cost = rec["cost"]
        saving = "" if cost["full_retrain_seconds"] is None else (
            f"; training {cost['training_seconds']:.1f} s against "
            f"{cost['full_retrain_seconds']:.1f} s for a full retrain")
        console.print(
            f"request {rec['request_id']} ({f}): {rec['model']} v{rec['from_version']} -> {to} "
            f"({'promoted' if rec['promoted'] else 'kept, not promoted'}: "
            f"{rec['promotion_reason']}) in {rec['durations']['total']:.1f} s{saving}; "
            f"report {out / 'report.html'}", highlight=False)
    mirror_after(st, [name])


IDS_SUFFIXES = (".txt", ".csv", ".npy")


def ids_files(paths: list[Path]) -> list[Path]:
    """``--ids`` as request files: each file is one request; a folder gives every ids file in
    it (``.txt``, ``.csv``, ``.npy``), in name order."""
    out = []
    for p in paths:
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and f.suffix in IDS_SUFFIXES)
            if not found:
                raise DormantError(f"--ids {p} is a folder with no ids files (.txt, .csv or "
                                   ".npy); put one file per pending request in it")
            out += found
        else:
            out.append(p)
    if len(set(out)) != len(out):
        raise DormantError("--ids names the same file twice; give each request once")
    return out


def audit(
    original: Annotated[Path, typer.Option(help="the model before unlearning (.safetensors)")],
    unlearned: Annotated[Path, typer.Option(help="the model after unlearning (.safetensors)")],
    ids: Ids,
    dataset: DataName = "digits",
    data_root: DataRoot = None,
    train_size: TrainSize = None,
    model: Annotated[str | None, typer.Option(
        "--model", help="architecture of plain state dicts, e.g. cnn-small")] = None,
    policy: PolicyOpt = None,
    ledger: Annotated[Path | None, typer.Option(help="also record the audit in this ledger")]
    = None,
    out: Annotated[Path | None, typer.Option(help="report folder")] = None,
    seed: int = 0,
    device: Device = "auto",
) -> None:
    """Check a model unlearned elsewhere: the same checks, verdict and report as forget."""
    from dormant.data.forget import read_ids
    from dormant.requests import Ledger, load_policy
    from dormant.requests import audit as run_audit

    pol = load_policy(policy)
    for p in (original, unlearned):
        need_file(p, "checkpoint", suffix=".safetensors")
    out = out or Path("runs") / f"audit-{time.strftime('%Y%m%d-%H%M%S')}"
    _check_out(out)
    book = Ledger(ledger) if ledger is not None else None
    ds = _dataset(dataset, data_root, train_size)
    forget_ids = read_ids(ids, len(ds.y_train))
    with ProgressBars(console) as bars:
        rec = run_audit(original, unlearned, ds, forget_ids, pol, out, arch=model,
                        device=device, seed=seed, ledger=book, progress=bars)
    console.print(_summary(rec))
    console.print(f"audit verdict {rec['verdict']}; report {out / 'report.html'}")


def inspect(
    store: StoreDir,
    model: Annotated[str, typer.Option("--model", help="NAME or NAME@VERSION in the store")],
    dataset: DataName = "digits",
    data_root: DataRoot = None,
    train_size: TrainSize = None,
    share: Annotated[float, typer.Option(
        help="the share of the training set to sample at random, e.g. 0.05")] = 0.05,
    detectors: Annotated[str | None, typer.Option(
        help="comma-separated per-sample detectors (default: all): "
             "see dormant.detectors")] = None,
    out: Annotated[Path | None, typer.Option(help="report folder")] = None,
    seed: int = 0,
    device: Device = "auto",
) -> None:
    """Scan a seeded random sample of a store model's training set with the per-sample
    detectors, and rank the contributors of its data manifest by their flagged share."""
    from dormant.detectors import get_detector
    from dormant.requests import ModelStore, parse_ref
    from dormant.requests.inspect import check_share, inspect_model
    from dormant.requests.inspect_report import write_inspection

    check_share(share)
    names = None if detectors is None else [d.strip() for d in detectors.split(",")
                                            if d.strip()]
    for d in names or []:
        get_detector(d)
    name, version = parse_ref(model)
    out = out or Path("runs") / f"inspect-{time.strftime('%Y%m%d-%H%M%S')}"
    _check_out(out)
    st = ModelStore(store)
    st.resolve(name, version)
    ds = _dataset(dataset, data_root, train_size)
    with ProgressBars(console) as bars:
        rec = inspect_model(st, name, version, ds, share=share, seed=seed, detectors=names,
                            device=device, progress=bars)
    paths = write_inspection(rec, out)
    t = Table(title=f"{name} v{rec['version']}: {rec['sampled']} of {rec['training_ids']} "
                    f"training images sampled (seed {seed})")
    t.add_column("contributor")
    t.add_column("sampled", justify="right")
    for d in rec["detectors"].values():
        t.add_column(f"{d['label']} flagged", justify="right")
    for r in rec["contributors"]:
        t.add_row(r["contributor"], str(r["sampled"]),
                  *(f"{r['flagged'][d]} ({100 * r['share'][d]:.1f}%)" for d in rec["detectors"]))
    console.print(t)
    console.print(f"report {paths['html']}", highlight=False)


def _sign_off(store: Path, request: str, by: str, comment: str, approve: bool,
              ledger: Path | None) -> None:
    from dormant.requests import ModelStore
    from dormant.requests.forget import check_text

    check_text("by", by, "who signs off, e.g. 'dpo@example.org'")
    check_text("comment", comment, "why, in a few words")
    st = ModelStore(store, ledger)
    finished = {e.request_id: e for e in st.ledger.entries(kind="request-finished")}
    ids = [r for r in finished if r.startswith(request.strip())] if request.strip() else []
    if len(ids) != 1:
        raise DormantError(
            f"no finished request {request!r} in {store}; see dormant ledger show STORE"
            if not ids else f"{request!r} is the start of {len(ids)} request ids; give more "
                            "of it")
    made = finished[ids[0]]
    v = st.sign_off(made.model, ids[0], approve=approve, by=by, comment=comment,
                    on_wait=lambda: console.print(
                        f"waiting for the store lock ({store / '.lock'}): a request is "
                        "running"))
    now = st.resolve(v.name)
    console.print(f"{v.name} v{v.version} {'approved' if approve else 'rejected'} by {by}; "
                  f"v{now.version} is current", highlight=False)
    mirror_after(st, [v.name])


SignOffBy = Annotated[str, typer.Option("--by", help="who signs off (recorded in the ledger)")]
SignOffComment = Annotated[str, typer.Option(help="why, in a few words (recorded)")]
RequestId = Annotated[str, typer.Option(
    "--request", help="the request id, or its start (dormant ledger show)")]


def approve(store: StoreDir, request: RequestId, by: SignOffBy, comment: SignOffComment,
            ledger: LedgerOpt = None) -> None:
    """Sign off a version kept back by a warning: promote it, with who and why in the
    ledger. Refused once anything else was promoted since, or if it was decided already."""
    _sign_off(store, request, by, comment, True, ledger)


def reject(store: StoreDir, request: RequestId, by: SignOffBy, comment: SignOffComment,
           ledger: LedgerOpt = None) -> None:
    """Refuse a version kept back by a warning for good, with who and why in the ledger."""
    _sign_off(store, request, by, comment, False, ledger)


@store_app.command("add")
def store_add(
    store: Annotated[Path, typer.Argument(help="store folder (created if new)")],
    name: Annotated[str, typer.Argument(help="the model's name in the store")],
    checkpoint: Annotated[Path, typer.Argument(help="a .safetensors checkpoint")],
    arch: Annotated[str | None, typer.Option(
        help="architecture of a plain state dict, e.g. cnn-small")] = None,
    ledger: LedgerOpt = None,
    new_lineage: NewLineage = None,
    manifest: Annotated[Path | None, typer.Option(
        help="the training set's provenance: a CSV 'id,contributor' with one line per "
             "training id (kept and hashed; requests' reports and dormant inspect read "
             "it)")] = None,
) -> None:
    """Add a checkpoint as NAME's next version (promoted). A name with promoted deletions
    takes a new checkpoint only as a new lineage (--new-lineage)."""
    from dormant.requests import ModelStore
    from dormant.requests.deleters import add_model
    from dormant.requests.manifest import read_manifest

    given = None if manifest is None else read_manifest(manifest)
    st = ModelStore(store, ledger, create=True)
    v = add_model(st, name, checkpoint, arch=arch, new_lineage=new_lineage, manifest=given)
    console.print(f"added {name} v{v.version} ({v.sha256[:12]}) at ledger row {v.seq}"
                  + (f", lineage {v.lineage}" if new_lineage else "")
                  + ("" if given is None else f", with a manifest of {len(given)} ids from "
                     f"{len(set(given.values()))} contributors"))
    mirror_after(st, [name])


store_app.command("mirror")(store_mirror)


@store_app.command("list")
def store_list(store: Annotated[Path, typer.Argument(help="store folder")],
               ledger: LedgerOpt = None) -> None:
    """Every model and version in a store; the current one (in use) is marked."""
    from dormant.requests import ModelStore

    st = ModelStore(store, ledger)
    t = Table(title=f"store {store}")
    for col in ("model", "version", "lineage", "status", "from", "request", "sha256"):
        t.add_column(col)
    for name in st.models():
        current = st.resolve(name).version
        for v in st.versions(name):
            status = ("current" if v.version == current
                      else "superseded" if v.promoted else "not promoted")
            t.add_row(name, f"v{v.version}", str(v.lineage), status,
                      "-" if v.from_version is None else f"v{v.from_version}",
                      v.request_id or "-", v.sha256[:12])
    console.print(t)
    console.print("current: the version a request without @VERSION uses (the latest promoted); "
                  "superseded: promoted once, replaced since; not promoted: kept, never in use; "
                  "lineage: a new one starts where a model was added with --new-lineage")


@ledger_app.command("verify")
def ledger_verify(
    ledger: LedgerArg,
    store: Annotated[Path | None, typer.Option(help="re-hash the checkpoints the rows name")]
    = None,
    expect_head: Annotated[str | None, typer.Option(help="the head hash you kept elsewhere")]
    = None,
    mirror: Annotated[bool, typer.Option(
        "--mirror/--no-mirror", help="also check the MLflow registry mirrors the ledger "
        "records (dormant store mirror)")] = True,
) -> None:
    """Re-walk the hash chain (and the checkpoints, and the registry mirrors); exit 1 at the
    first bad row, or on any disagreement of a mirror."""
    book = _open_ledger(ledger)
    if store is None and ledger.is_dir():
        store = ledger
    r = book.verify(expect_head=expect_head, store=store)
    if not r.ok:
        console.print(f"[red]FAILED[/] at row {r.bad_seq}: {escape(r.problem)}", highlight=False,
                      markup=True)
        raise typer.Exit(1)
    mirrors = 0
    if mirror:
        from dormant.tracking.verify import mirror_problems

        problems, mirrors = mirror_problems(book, ledger, store)
        for p in problems:
            console.print(f"[red]MIRROR[/] {escape(p)}", highlight=False, soft_wrap=True,
                          markup=True)
        if problems:
            raise typer.Exit(1)
    note = f"; {r.note}" if r.note else ""
    agree = f", {mirrors} registry mirror(s) in agreement" if mirrors else ""
    console.print(f"ok: {r.rows} rows, chain intact, head {r.head}, {r.files_checked} "
                  f"checkpoint(s) re-hashed{agree}{note}", highlight=False)


@ledger_app.command("head")
def ledger_head(ledger: LedgerArg) -> None:
    """Print the head hash: keep it elsewhere and pass it to verify --expect-head."""
    print(_open_ledger(ledger).head() or "")


@ledger_app.command("show")
def ledger_show(ledger: LedgerArg,
                model: Annotated[str | None, typer.Option(help="only this model")] = None
                ) -> None:
    """Every row, with each request's checks and the drift since the model's first version."""
    from dormant.requests.history import cost_line, history_rows

    t = Table(title=f"ledger {ledger}")
    cols = ("row", "time", "kind", "model", "request", "versions", "ids", "method", "verdict",
            "promoted", "test", "drift")
    for col in cols:
        t.add_column(col, justify="right" if col in ("row", "ids", "test", "drift") else "left")
    for r in history_rows(_open_ledger(ledger), model):
        t.add_row(*(r[c] for c in cols))
    # twelve columns need more than 80: a narrow terminal wraps lines rather than hiding cells
    Console(width=max(console.width, 132), markup=False).print(t)
    console.print("test: test accuracy after the row's request; drift: its change since the "
                  "model's first version (points)")
    book = _open_ledger(ledger)
    line = cost_line(book, model)
    if line is not None:
        console.print(line, highlight=False)
    for s in book.requests(model):
        if s.status == "unfinished":
            console.print(f"[yellow]unfinished[/] request {escape(s.describe())}: no outcome "
                          "row; killed, or still running (rerun the same request to resume it)",
                          highlight=False, markup=True)
        elif s.status == "failed":
            console.print(f"[red]failed[/] request {escape(s.describe())}", highlight=False,
                          markup=True)


@ledger_app.command("export")
def ledger_export(
    ledger: LedgerArg,
    format: Annotated[str, typer.Option("--format", help="json or csv")] = "json",
    out: Annotated[Path | None, typer.Option(help="file to write (default: stdout)")] = None,
) -> None:
    """Every row for auditors, as JSON or CSV."""
    from dormant.store.files import atomic_write_text

    if out is not None:
        check_file_out(out)
    text = _open_ledger(ledger).export(format)
    if out is None:
        print(text)
    else:
        atomic_write_text(out, text)
        console.print(f"wrote {out}")


def register(app: typer.Typer) -> None:
    app.command("forget")(forget)
    app.command("audit")(audit)
    app.command("inspect")(inspect)
    app.command("approve")(approve)
    app.command("reject")(reject)
    app.add_typer(store_app, name="store")
    app.add_typer(ledger_app, name="ledger")
