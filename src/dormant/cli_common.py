"""What the command-line modules share: the console, option types, input checks, and the
study commands' flags, derived from the settings models they set.

A study command (``relearn``, ``backdoor``) is a list of ``Flag``s, each naming the key of the
spec it sets; its type, default and choices come from the spec's field. ``study_command``
turns them into a typer command with the study file, ``--set KEY=VALUE``, the executor flags
(from ``ExecutorOptions``) and ``--out``. Every value then goes through one loader
(``load_spec``) and one error formatter (``dormant.settings``): a bad value names the flag,
the ``--set`` or the file's key that gave it.
"""

from __future__ import annotations

import inspect
import os
import time
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import typer
from pydantic import BaseModel
from rich.console import Console

from dormant.errors import DormantError
from dormant.settings import apply_sets, load_yaml, not_finite, parse_yaml, put, short, validate

# markup off: what is printed holds user text (paths, names, error messages), and a file
# named "[reverse]evil.txt" must print as it is; the few styled lines opt in with markup=True
console = Console(markup=False)

Dataset = Annotated[str, typer.Option("--dataset", help="digits, mnist, fashion-mnist, cifar10, "
                                      "cifar100, svhn, imagefolder:PATH or npz:PATH")]
DataRoot = Annotated[Path | None, typer.Option(help="folder holding torchvision datasets")]
Download = Annotated[bool, typer.Option(help="let torchvision download the dataset")]
TrainSize = Annotated[int | None, typer.Option(help="seeded stratified subset of the train set")]
ModelOpt = Annotated[str | None, typer.Option("--model", help="model name (default: per dataset)")]
Device = Annotated[str, typer.Option(help="auto, cpu or cuda")]
Forget = Annotated[str | None, typer.Option(
    "--forget", help="random:N, class:C, class:C:atypical:F, class:C:typical:F, canary:N, "
    "ids:PATH (default: per dataset)")]

# help of the study flags, by flag name; type, default and choices come from the spec
HELP = {
    "dataset": Dataset.__metadata__[0].help,
    "data_root": "folder holding torchvision datasets",
    "download": "let torchvision download",
    "train_size": "seeded stratified subset of the train set",
    "test_size": "seeded stratified test subset",
    "model": "model name (default: per dataset)",
    "forget": Forget.__metadata__[0].help,
    "cscores": "C-score .npz for atypical sets",
    "methods": "comma-separated method names",
    "preset": "the methods' preset (see dormant methods --preset; default: the study's)",
    "k": "leaked examples, e.g. 0,5",
    "seeds": "e.g. 0,1,2",
    "relearn_sets": "comma-separated relearn sets",
    "train_steps": "training steps (default: per dataset)",
    "unlearn_steps": "unlearning steps (default: per dataset)",
    "attack_steps": "attack budgets, e.g. 100,400",
    "attack_lr": "attack learning rates, e.g. 1e-5,1e-4",
    "calibrate": "oracle: pick each method's strength so it forgets as much as the oracle on "
                 "the leakable ids; none: run the values as given",
    "stop": "budget: every method runs its full budget; oracle-leakable: stop once the "
            "leakable ids reach the oracle's accuracy",
    "analysis": "linear mode connectivity and membership inference for every model",
    "lmc_points": "points on each LMC line",
    "analysis_size": "retain and test images the analysis evaluates",
    "device": "auto, cpu or cuda",
    "conditions": "comma-separated conditions",
    "trigger": "the trigger's kind",
    "amplitude": "trigger amplitude in [0, 1]",
    "trigger_size": "patch or mined block side in pixels",
    "target": "the backdoor's target class",
    "poisons": "poisoned images per source class",
    "request": "clean images in the deletion request",
    "strategy": "how the request's images are picked",
    "threat": "attacker: the surrogate knows only the attacker's contribution and a public "
              "sample; full: the whole training set (an ablation)",
    "public": "public images (outside the victim's training set) the attacker holds",
    "surrogate_public": "public images the attacker's surrogate trains on",
    "counterweights": "natural carriers of a mined trigger the attacker brings from its "
                      "public sample into its contribution",
    "poison_choice": "random poisons, or the influence-chosen ones",
    "retrain_seeds": "training seeds retrain runs each request under",
    "match_budget": "times the attack's steps the matched random control may run",
    "scans": "defenses run on every model: comma-separated nc, cd, ibau, or none",
    "executor": "where the study's cells run: serial (this process), local (a process pool) "
                "or ray (a Ray cluster)",
    "workers": "local: processes (default: the CPU count); ray: cells in flight at once",
    "ray_address": "ray: the cluster to join (auto: a running one; default: start a local one)",
    "gpus_per_cell": "a GPU share per cell: 0.25 packs four cells onto one GPU",
    "threads": "torch CPU threads per cell (rows are identical across executors at equal "
               "threads; default: serial all, local CPUs / workers, ray 1)",
    "track": "mlflow: record every cell as an MLflow run once the report is written (the "
             "mlflow extra; see docs/tracking.md)",
    "tracking_uri": "with --track mlflow: the MLflow tracking URI (default: "
                    "$MLFLOW_TRACKING_URI, else a local ./mlruns folder)",
}


@dataclass(frozen=True)
class Flag:
    """``--NAME`` sets the settings key ``key`` (dotted for a nested key); ``parse`` turns
    the flag's text into the key's value (a mapping sets each of its keys under ``key``)."""

    key: str
    name: str = ""
    parse: Callable[[Any], Any] | None = None

    @property
    def dest(self) -> str:
        return self.name or self.key.rsplit(".", 1)[-1]

    @property
    def flag(self) -> str:
        return "--" + self.dest.replace("_", "-")


def flags(*names: str, **renamed: str) -> list[Flag]:
    """``Flag``s named as their keys, then ``flag_name="key"`` ones."""
    return [Flag(n) for n in names] + [Flag(k, n) for n, k in renamed.items()]


def _field(cls: type[BaseModel], key: str):
    *outer, last = key.split(".")
    for part in outer:
        cls = _plain(_fields(cls)[part].annotation)
    return _fields(cls)[last]


def _default(cls: type, key: str, field) -> Any:
    """The value the spec has for ``key`` when nothing sets it: read from a default spec, so
    a nested key shows the study's own default (``--trigger``: noise), not its class's."""
    try:
        value = cls()
        for part in key.split("."):
            value = getattr(value, part)
        return value
    except Exception:  # noqa: BLE001 - a spec with required keys: the field's own default
        return field.get_default(call_default_factory=True)


def _fields(cls: type) -> dict:
    """A pydantic model's or pydantic dataclass's fields."""
    return getattr(cls, "__pydantic_fields__", None) or cls.model_fields


def _plain(tp: Any) -> Any:
    """A field's type without ``Annotated``, ``None`` and the later members of a union."""
    while True:
        if get_origin(tp) is Annotated:
            tp = get_args(tp)[0]
        elif get_origin(tp) in (Union, types.UnionType):
            tp = next(a for a in get_args(tp) if a is not type(None))
        else:
            return tp


def _option(cls: type[BaseModel], f: Flag) -> tuple[inspect.Parameter, Callable]:
    """The typer parameter of ``f`` and the function from its value to the key's value."""
    field = _field(cls, f.key)
    tp = _plain(field.annotation)
    item = _plain(get_args(tp)[0]) if get_origin(tp) is list else None
    help_ = HELP.get(f.dest, "")
    choices = get_args(item or tp) if get_origin(item or tp) is Literal else ()
    if choices and not all(c in help_ for c in choices):
        help_ = f"{help_}: {', '.join(choices)}" if help_ else ", ".join(choices)
    default = _default(cls, f.key, field)
    shown = (",".join(map(str, default)) if isinstance(default, list) else str(default))
    if f.parse is not None or item is not None or choices or tp not in (bool, int, float):
        kind: type = str
    else:
        kind = tp
    show = False if default is None or f.parse is not None else shown
    names = f"{f.flag}/--no-{f.flag[2:]}" if kind is bool else f.flag
    option = typer.Option(names, help=help_, show_default=show)
    param = inspect.Parameter(f.dest, inspect.Parameter.KEYWORD_ONLY, default=None,
                              annotation=Annotated[kind | None, option])
    if f.parse is not None:
        return param, f.parse
    if item in (int, float):
        return param, lambda text: _numbers(text, f.flag[2:], item)
    if item is not None:
        return param, lambda text: [t.strip() for t in text.split(",")]
    return param, lambda v: v


def load_spec(cls: type, study: Path | None = None, given: dict | None = None,
              sets: list[str] | None = None) -> Any:
    """``cls`` from the study file, then ``given`` (``{key: (flag, value)}``, ``None`` values
    skipped), then ``--set`` items; a bad value names the flag, the ``--set`` or the key."""
    data = load_yaml(study, "study file") if study is not None else {}
    names = {}
    for key, (flag, value) in (given or {}).items():
        if value is None:
            continue
        items = value.items() if isinstance(value, dict) else [("", value)]
        for sub, v in items:
            for x in v if isinstance(v, list) else [v]:
                if not_finite(x):
                    raise DormantError(f"{flag}: must be a finite number, got {x!r}")
            put(data, f"{key}.{sub}" if sub else key, v)
            names[f"{key}.{sub}" if sub else key] = flag
    data = apply_sets(data, sets)
    for s in sets or []:
        key = s.partition("=")[0].strip()
        # the --set replaced whatever a flag put at this key, above it or below it: an error
        # there is the --set's, not the flag's
        names = {k: f for k, f in names.items() if not (
            k == key or k.startswith(key + ".") or key.startswith(k + "."))}
        names[key] = f"--set {s}"
    return validate(cls, data, f"study file {study}" if study else "options", names)


def flag_values(**values: Any) -> dict:
    """``{key: (--key, value)}``: what ``load_spec`` takes from a command's own options."""
    return {k: ("--" + k.replace("_", "-"), v) for k, v in values.items()}


StudyFile = Annotated[Path | None, typer.Argument(help="YAML study file; flags override it")]
SetOpt = Annotated[list[str] | None, typer.Option(
    "--set", metavar="KEY=VALUE", help="set any key of the study, nested ones dotted, e.g. "
    "hparams.finetune.lr=1e-4 (a YAML value; overrides the file and the flags); repeat it")]
OutOpt = Annotated[Path | None, typer.Option(help="output folder (default runs/NAME-TIME)")]
EXECUTOR_FLAGS = flags("executor", "workers", "ray_address", "gpus_per_cell", "threads")
TRACKING_FLAGS = flags("track", "tracking_uri")


def warn_ignored(executor) -> None:
    """A warning line per executor flag this run would silently ignore."""
    import torch

    from dormant.executors.options import ignored

    for line in ignored(executor, torch.cuda.is_available()):
        console.print(f"warning: {line}", style="yellow", markup=False, highlight=False,
                      soft_wrap=True)


def study_command(app: typer.Typer, name: str, cls: type[BaseModel], study_flags: list[Flag]):
    """Register ``fn(spec, out, executor)`` as the command ``name``: a study file, a flag per
    ``study_flags`` (typed from ``cls``), ``--set``, the executor flags and ``--out``."""
    from dormant.executors.options import ExecutorOptions
    from dormant.tracking.options import TrackingOptions

    spec_opts = [(f, *_option(cls, f)) for f in study_flags]
    exec_opts = [(f, *_option(ExecutorOptions, f)) for f in EXECUTOR_FLAGS]
    track_opts = [(f, *_option(TrackingOptions, f)) for f in TRACKING_FLAGS]
    kw_only = inspect.Parameter.KEYWORD_ONLY

    def deco(fn: Callable) -> Callable:
        def command(**kw: Any) -> None:
            def given(opts: list) -> dict:
                return {f.key: (f.flag, None if kw[f.dest] is None else parse(kw[f.dest]))
                        for f, _, parse in opts}

            spec = load_spec(cls, kw["study"], given(spec_opts), kw["set_"])
            executor = load_spec(ExecutorOptions, None, given(exec_opts))
            warn_ignored(executor)
            out = kw["out"] or Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
            _check_out(out)
            check_sizes(spec)
            from dormant.tracking.cli import tracked

            with tracked(load_spec(TrackingOptions, None, given(track_opts)), out, spec, name):
                fn(spec, out, executor)

        params = [inspect.Parameter("study", kw_only, default=None, annotation=StudyFile),
                  *(p for _, p, _ in spec_opts),
                  inspect.Parameter("set_", kw_only, default=None, annotation=SetOpt),
                  *(p for _, p, _ in exec_opts),
                  *(p for _, p, _ in track_opts),
                  inspect.Parameter("out", kw_only, default=None, annotation=OutOpt)]
        command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        command.__doc__ = fn.__doc__
        app.command(name)(command)
        return fn

    return deco


def _numbers(text: str | None, what: str, kind: type = int) -> list | None:
    """A comma-separated flag value as a list of ``kind``; a bad item is one clear line."""
    if text is None:
        return None
    try:
        return [kind(t) for t in text.split(",") if t.strip()]
    except ValueError:
        example = "0,5" if kind is int else "1e-5,1e-4"
        noun = "integers" if kind is int else "numbers"
        raise DormantError(
            f"--{what} takes comma-separated {noun}, e.g. {example}; got {short(text)!r}"
        ) from None


def _check_data_root(data_root: Path | str | None, flag: str = "--data-root") -> str | None:
    """``data_root`` as text, or an error if it does not exist."""
    if data_root is not None and not Path(data_root).exists():
        raise DormantError(f"{flag} {data_root} does not exist")
    return None if data_root is None else str(data_root)


def _check_out(out: Path | None, flag: str = "--out") -> None:
    """Refuse, before any work, an output folder that cannot be made or written: a file, a
    folder under a file, one whose nearest existing folder is not writable, or one inside a
    model store (only the store writes there)."""
    if out is None:
        return
    out = Path(out)
    outside_stores(out, flag)
    if out.exists() and not out.is_dir():
        raise DormantError(f"{flag} {out} is a file; give a folder to write into")
    ancestor = out
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise DormantError(f"{flag} {out}: {ancestor} is a file, so no folder can be made "
                           "under it; give another path")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        what = "write into" if ancestor == out else "create folders in"
        raise DormantError(f"{flag} {out}: cannot {what} {ancestor} (permission denied or "
                           "a read-only file system); give a writable path")


def check_cache_dir() -> None:
    """Refuse, before a study trains anything, a cache folder that cannot be made or written:
    every model a study builds goes there, so each cell would fail on it."""
    from dormant.data.sources import default_cache_dir

    env = os.environ.get("DORMANT_CACHE")
    _check_out(default_cache_dir(), "DORMANT_CACHE" if env else
               "the cache folder (set DORMANT_CACHE to move it)")


def outside_stores(path: Path, flag: str = "--out") -> None:
    """Refuse a path inside a dormant model store: its checkpoints, ledger and request
    evidence are written by the store alone, and never overwritten."""
    from dormant.requests.store import store_root_of

    root = store_root_of(path)
    if root is not None:
        raise DormantError(f"{flag} {path} is inside the model store {root}; only the store "
                           "writes there (its checkpoints, ledger and evidence are never "
                           "overwritten): give a path outside it")


SQLITE_MAGIC = b"SQLite format 3\x00"


def check_file_out(out: Path, flag: str = "--out") -> None:
    """Refuse, before any work, an output file that cannot be written or must not be: inside
    a model store, a folder, an SQLite file (a ledger?), or under a missing or unwritable
    folder."""
    out = Path(out)
    outside_stores(out, flag)
    if out.is_dir():
        raise DormantError(f"{flag} {out} is a folder; give a file name, e.g. "
                           f"{out / 'ledger.json'}")
    if out.is_file():
        with open(out, "rb") as f:
            if f.read(len(SQLITE_MAGIC)) == SQLITE_MAGIC:
                raise DormantError(f"{flag} {out} is an SQLite database (a ledger?); an export "
                                   "never replaces one: give a new file name")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise DormantError(f"{flag} {out}: folder {parent} does not exist; create it or give "
                           "another path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise DormantError(f"{flag} {out}: cannot write into {parent} (permission denied or "
                           "a read-only file system); give a writable path")


def check_sizes(spec: Any) -> None:
    """A ``train_size``/``test_size`` the user set that the dataset cannot give is refused
    (one line naming both counts) instead of being clamped; the defaults still clamp."""
    asked = {k: getattr(spec, k, None) for k in ("train_size", "test_size")
             if k in spec.model_fields_set}
    if not any(v is not None for v in asked.values()):
        return
    from dormant.data import load_dataset
    from dormant.data.dataset import check_sizes as check
    from dormant.data.sources import default_cache_dir

    ds = load_dataset(spec.dataset, root=spec.data_root, download=spec.download,
                      cache_dir=default_cache_dir())
    check(ds, asked.get("train_size"), asked.get("test_size"))


def _check_positive(**values: int | None) -> None:
    for name, v in values.items():
        if v is not None and v <= 0:
            raise DormantError(f"--{name.replace('_', '-')} must be a positive integer, got {v}")


def key_values(items: list[str] | None, flag: str, example: str) -> dict:
    """``key=value`` items (values read as YAML scalars) as a dict; ``flag`` and ``example``
    name the option in the one-line error."""
    out = {}
    for item in items or []:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise DormantError(f"{flag} takes key=value, e.g. {example}; got {item!r}")
        out[key.strip()] = parse_yaml(value, f"{flag} {item!r}")
    return out
