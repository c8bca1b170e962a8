"""Published numbers: every table in the README and docs is rendered from rows committed
under ``results/``, never typed.

A published table is a block in a markdown file::

    <!-- dormant:table KIND results/NAME [key=value ...] -->
    ...what the renderer writes...
    <!-- /dormant:table -->

``render_text`` rewrites every block from its rows; ``dormant tables FILE... --check`` fails
when a file differs from what its rows give, and the test suite runs that check on the
README and every docs page. A results folder holds ``rows.jsonl`` (the study's rows,
trimmed of curves and paths) and ``meta.json`` (the command, the git commit, the machine,
the protocol), written by ``publish``.
"""

from __future__ import annotations

import json
import math
import platform
import re
import shlex
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dormant.errors import DormantError
from dormant.experiments.protocol import PROTOCOL
from dormant.experiments.verdicts import Verdict, why
from dormant.report.tables import (
    VERDICT_HEADERS,
    Table,
    fmt,
    main_rows,
    main_setting,
    main_verdicts,
    markdown,
    method_order,
    ok_rows,
    paired,
    verdict_table,
)
from dormant.store.files import atomic_write_text

BLOCK = re.compile(r"(<!-- dormant:table (?P<args>[^>]*?) -->\n)"
                   r"(?P<body>(?:(?!<!-- dormant:table ).)*?)(<!-- /dormant:table -->)", re.S)
OPEN, CLOSE = "<!-- dormant:table ", "<!-- /dormant:table -->"
OPTIONS = {"k", "steps", "methods", "columns"}
DROP = ("curve_steps", "curve_forget_acc", "lmc", "cell", "hparams")
"""Row keys a results folder leaves out: the curves (their end statistic is kept), the LMC
lines, the cell's hash and the last stage's values (``pipeline`` keeps every stage's)."""


@dataclass(frozen=True)
class Published:
    rows: list[dict]
    meta: dict
    where: str


Renderer = Callable[[Published, dict], Table | str]
RENDERERS: dict[str, Renderer] = {}


def renderer(kind: str) -> Callable[[Renderer], Renderer]:
    def add(fn: Renderer) -> Renderer:
        RENDERERS[kind] = fn
        return fn
    return add


def read_published(folder: Path, where: str | None = None) -> Published:
    """The rows and meta of a results folder; ``where`` names it in rendered text."""
    rows_path, meta_path = folder / "rows.jsonl", folder / "meta.json"
    if not rows_path.is_file() or not meta_path.is_file():
        raise DormantError(f"{folder}: not a results folder (it needs rows.jsonl and "
                           "meta.json); write one with dormant publish")
    try:
        rows = [json.loads(line) for line in rows_path.read_text("utf-8").splitlines()
                if line]
        meta = json.loads(meta_path.read_text("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DormantError(f"{folder}: unreadable rows.jsonl or meta.json ({e}); write it "
                           "again with dormant publish") from None
    return Published(rows, meta, where or str(folder))


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def publish(run: Path, dest: Path, command: str, study: Path | None = None,
            commit: str | None = None) -> Path:
    """``run``'s rows, trimmed, into ``dest/rows.jsonl`` with ``dest/meta.json``: the
    command, the git commit the rows were made at (``commit``; default the checkout's, and
    whether its tree is clean), the machine, the protocol, and the study file's text."""
    import torch

    src = run / "results.jsonl"
    if not src.is_file():
        raise DormantError(f"{run}: no results.jsonl; give the output folder of a study")
    try:
        rows = [json.loads(line) for line in src.read_text("utf-8").splitlines() if line]
        text = study.read_text("utf-8") if study is not None else None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DormantError(f"{src if study is None else f'{src} or {study}'}: unreadable "
                           f"({e})") from None
    if not rows:
        raise DormantError(f"{src} has no rows")
    # everything is gathered before anything is written: a failure leaves the folder as it was
    meta = {
        "command": command, "commit": commit or _git("rev-parse", "HEAD"),
        # with --commit the checkout says nothing about the run's tree: not recorded
        "tree_clean": None if commit else _git("status", "--porcelain",
                                               "--untracked-files=no") == "",
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, "
                   f"{__import__('os').cpu_count()} cores, torch {torch.__version__}",
        # the reference rows use no rule of the protocol (their keys leave it out)
        "protocols": sorted({r.get("protocol") for r in rows if r.get("protocol")
                             and r.get("method") not in ("original", "retrain")}),
        "rows": len(rows), "seeds": sorted({r["seed"] for r in rows if "seed" in r}),
    }
    if text is not None:
        meta["study"] = text
    dest.mkdir(parents=True, exist_ok=True)
    atomic_write_text(dest / "rows.jsonl", "".join(
        json.dumps({k: v for k, v in r.items() if k not in DROP}, sort_keys=True) + "\n"
        for r in rows))
    atomic_write_text(dest / "meta.json", json.dumps(meta, indent=1, sort_keys=True) + "\n")
    return dest


def _args(text: str) -> tuple[str, str, dict]:
    try:
        parts = shlex.split(text)
    except ValueError as e:
        raise DormantError(f"dormant:table {text!r}: {e}") from None
    if len(parts) < 2 or any("=" not in p for p in parts[2:]):
        raise DormantError(f"dormant:table {text!r}: write KIND results/NAME [key=value ...]")
    opts = dict(p.split("=", 1) for p in parts[2:])
    unknown = sorted(set(opts) - OPTIONS)
    if unknown:
        raise DormantError(f"dormant:table {text!r}: no option {unknown[0]!r}; options: "
                           f"{', '.join(sorted(OPTIONS))}")
    return parts[0], parts[1], opts


def _source(pub: Published) -> str:
    m = pub.meta
    seeds = ", ".join(map(str, m.get("seeds", [])))
    protocols = ", ".join(m.get("protocols", [])) or "none recorded"
    stale = [p for p in m.get("protocols", []) if p != PROTOCOL.tag]
    warn = (f" **Made under protocol {', '.join(stale)}, not the current {PROTOCOL.tag}.**"
            if stale else "")
    # None: the commit was given (--commit), so the checkout's state says nothing
    commit = (m.get("commit") or "unknown")[:12] + (" (uncommitted changes)"
                                                    if m.get("tree_clean") is False else "")
    return (f"Rendered by `dormant tables` from `{pub.where}/rows.jsonl` ({m.get('rows')} rows; "
            f"seeds {seeds}; protocol {protocols}; commit {commit}; {m.get('machine')}): "
            f"`{m.get('command')}`.{warn}")


def render_block(args: str, root: Path) -> str:
    kind, where, opts = _args(args)
    if kind not in RENDERERS:
        raise DormantError(f"dormant:table: unknown kind {kind!r}; known: "
                           f"{', '.join(sorted(RENDERERS))}")
    pub = read_published(root / where, where)
    try:
        out = RENDERERS[kind](pub, opts)
    except (ValueError, KeyError, TypeError) as e:
        raise DormantError(f"dormant:table {args!r}: cannot render from {where} "
                           f"({type(e).__name__}: {e})") from None
    return (out if isinstance(out, str) else markdown(out)) + "\n\n" + _source(pub) + "\n"


def render_text(text: str, root: Path) -> str:
    """``text`` with every ``dormant:table`` block re-rendered from its rows under ``root``;
    an opening tag without its closing one (or the reverse) is refused, never rewritten."""
    if text.count(OPEN) != text.count(CLOSE) or text.count(OPEN) != tables_in(text):
        raise DormantError("a dormant:table block is not closed (or a closing tag has no "
                           "opening one): every <!-- dormant:table ... --> needs its "
                           "<!-- /dormant:table --> before the next block")
    return BLOCK.sub(lambda m: m.group(1) + render_block(m.group("args"), root) + m.group(4),
                     text)


def tables_in(text: str) -> int:
    return len(BLOCK.findall(text))


# --- the renderers ---------------------------------------------------------------------------

def _ints(opts: dict, key: str) -> set[int] | None:
    if key not in opts:
        return None
    try:
        return {int(v) for v in opts[key].split(",")}
    except ValueError:
        raise DormantError(f"dormant:table: {key}={opts[key]!r} takes comma-separated "
                           "integers") from None


def _one_k(opts: dict) -> int:
    ks = _ints(opts, "k") or {0}
    if len(ks) != 1:
        raise DormantError(f"dormant:table: this kind shows one k; got k={opts['k']!r}")
    return ks.pop()


def _names(opts: dict, key: str = "methods") -> list[str] | None:
    return opts[key].split(",") if key in opts else None


def _selected(found: list[Verdict], opts: dict) -> list[Verdict]:
    ks, steps, names = _ints(opts, "k"), _ints(opts, "steps"), _names(opts)
    missing = sorted(set(names or []) - {v.method for v in found})
    if missing:
        raise DormantError(f"dormant:table: no method {missing[0]!r} in the rows")
    out = [v for v in found if (ks is None or v.k in ks)
           and (steps is None or v.attack_steps in steps)
           and (names is None or v.method in names)]
    if names is not None:  # the block's own order
        out.sort(key=lambda v: (v.attack_steps, v.k, names.index(v.method)))
    return out


@renderer("verdicts")
def verdicts_table(pub: Published, opts: dict) -> Table:
    """The verdict table (``report.tables.verdict_table``); ``k=``, ``steps=``, ``methods=``
    select lines, ``columns=`` (headers, comma-separated) selects columns."""
    table = verdict_table(_selected(main_verdicts(pub.rows), opts))
    cols = _names(opts, "columns") or VERDICT_HEADERS
    unknown = [c for c in cols if c not in VERDICT_HEADERS]
    if unknown:
        raise DormantError(f"dormant:table verdicts: no column {unknown[0]!r}; columns: "
                           f"{', '.join(VERDICT_HEADERS)}")
    idx = [VERDICT_HEADERS.index(c) for c in cols]
    return Table([VERDICT_HEADERS[i] for i in idx], [[r[i] for i in idx] for r in table.rows])


def _verdict_cell(v: Verdict | None) -> str:
    if v is None:
        return "-"
    ci = "" if math.isnan(v.excess_low) else f" [{v.excess_low:+.1f}, {v.excess_high:+.1f}]"
    return f"{v.excess:+.1f}{ci} **{v.verdict}**"


@renderer("strengths")
def strengths_table(pub: Published, opts: dict) -> Table:
    """One line per method: its utility cost and distance, then its excess, interval and
    verdict at each attack strength side by side (``k=`` one k, default 0)."""
    k = _one_k(opts)
    found = [v for v in main_verdicts(pub.rows) if v.k == k]
    steps = sorted({v.attack_steps for v in found})
    names = _names(opts) or list(dict.fromkeys(v.method for v in found))
    missing = sorted(set(names) - {v.method for v in found})
    if missing:
        raise DormantError(f"dormant:table: no method {missing[0]!r} in the rows")
    by = {(v.method, v.attack_steps): v for v in found}
    headers = ["method", "calibrated (first seed)", "test − oracle",
               "distance / oracle's", "gap",
               *(f"excess at {s} steps [95%], verdict" for s in steps)]
    first_row = {}
    for r in ok_rows(pub.rows):
        first_row.setdefault(r["method"], r)
    rows = []
    for name in names:
        first = next((by[name, s] for s in steps if (name, s) in by), None)
        if first is None:
            continue
        rows.append([_label(first_row[name]), _calibrated(first_row[name]),
                     fmt(first.test_gap, "signed"),
                     "-" if math.isnan(first.distance_ratio) else f"{first.distance_ratio:.2f}",
                     fmt(first.forget_gap, "signed"), *(_verdict_cell(by.get((name, s)))
                                                        for s in steps)])
    return Table(headers, rows)


def _label(row: dict) -> str:
    """The row's method, marked when it runs a method the reference starts from an initial
    safeguard without one."""
    from dormant.unlearn import available_methods, get_method

    stages = row.get("pipeline") or []
    alone = (len(stages) == 1 and stages[0][0] in available_methods()
             and get_method(stages[0][0]).safeguarded)
    return row["method"] + (" (standalone: not the reference's configuration)" if alone
                            else "")


@renderer("summary")
def summary_text(pub: Published, opts: dict) -> str:
    """The study's verdicts in words (``report.relearn.verdict_text``), ``k=`` and
    ``steps=`` selecting as for ``verdicts``."""
    from dormant.report.relearn import verdict_text

    return verdict_text(_selected(main_verdicts(pub.rows), opts))


def _strength(row: dict) -> str:
    cal = row.get("calibration") or []
    return ", ".join(f"{c['param']} {c['chosen']:.3g}" for c in cal) or "–"


def _calibrated(row: dict) -> str:
    """Each calibrated stage: its value and what it reached against the oracle on the
    calibration seed (leakable accuracy in %, or L2 from the original)."""
    out = []
    for c in row.get("calibration") or []:
        values = list(c["values"])
        unit = "leakable" if c["target"] == "leakable" else "L2"
        text = f"{c['method']} {c['param']} {c['chosen']:.3g}"
        if c["chosen"] in values:  # every candidate diverged: the base value, never scored
            text += f" ({unit} {c['scores'][values.index(c['chosen'])]:.3g} vs {c['goal']:.3g})"
        out.append(text + ("" if c.get("bracketed", True) else ", did not bracket"))
    return "; ".join(out) or "none"


@renderer("demo")
def demo_table(pub: Published, opts: dict) -> Table:
    """The demo's table: accuracies after unlearning and at the attack's end (means over
    seeds, ``k=``, default 0, at the main attack setting), the excess, verdict and
    calibrated strength of each method."""
    k = _one_k(opts)
    lr, steps = main_setting(pub.rows)
    rows = [r for r in main_rows(paired(pub.rows)) if r["k"] == k]
    found = {v.method: v for v in main_verdicts(pub.rows)
             if (v.k, v.attack_lr, v.attack_steps) == (k, lr, steps)}
    out = []
    for m in method_order(rows):
        mine = [r for r in rows if r["method"] == m]
        v = found.get(m)

        def mean(key: str, mine: list = mine) -> float:
            vals = [r[key] for r in mine if r.get(key) is not None]
            return float(np.mean(vals)) if vals else math.nan

        out.append([m, str(len(mine)), fmt(mean("retain_acc")), fmt(mean("test_acc")),
                    fmt(mean("forget_acc")), fmt(mean("forget_acc_attacked_end")),
                    _verdict_cell(v).replace(" **", " ").replace("**", "") if v else "-",
                    why(v) if v else "-", _strength(mine[0])])
    return Table(["method", "seeds", "retain", "test", "forget", "forget after attack (end)",
                  "excess [95%] verdict", "why", "calibrated"], out)


@renderer("membership")
def membership(pub: Published, opts: dict) -> Table:
    """The per-example membership table (``report.membership.membership_table``): LiRA,
    RMIA, U-LiRA and the challenge score per method, mean ± std over seeds."""
    from dormant.report.membership import membership_table

    table = membership_table(pub.rows)
    if table is None:
        raise ValueError("no row has per-example membership columns (mia: [lira, ...])")
    return table


# the backdoor study's renderers register themselves beside these
from dormant.report import published_backdoor  # noqa: E402, F401
