"""A study's cells as MLflow runs.

``track_study(out)`` reads the study folder (``results.jsonl`` and the report written from
it) and records, in one MLflow experiment:

- a *study run* (tag ``dormant.kind=study``) holding the report (``report.html``,
  ``report.md``, ``results.csv``, ``results.jsonl``, the figures), the study's settings
  (``study.yaml``) and its verdicts (``verdicts.json``);
- one *cell run* per cell, a child of the study run (``mlflow.parentRunId``): the row's
  settings as parameters (the resolved method hyper-parameters as ``hparams.NAME``), its
  measurements as metrics at step 0, its curves as metrics over steps, the verdict of the
  group it belongs to as the tag ``dormant.verdict``, the study's report (``report.md``) and
  the row itself (``row.json``) as artifacts. A failed cell's run ends FAILED with its error.

Tracking the same folder again (a resumed study) logs only the cells not logged yet (the
tag ``dormant.cell`` holds the cell key); a cell whose row changed since (a transient failure
retried) gets a new run and its old one is deleted. Every cell run's verdict tag and report
are brought up to date, since more seeds can change a group's verdict.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dormant.errors import DormantError
from dormant.tracking.client import mlflow_errors, open_client, quick, resolve_uri

HEAD = ("cell", "status", "error", "transient")
SETTINGS = frozenset({
    "seed", "k", "attack_lr", "attack_steps", "fit_target", "mia_shadows",  # relearning
    "target", "poisons", "amplitude", "counterweights", "camouflage", "trigger_row",
    "trigger_col", "dose",  # backdoor
})
"""Numeric row columns that set the cell rather than measure it: parameters, not metrics."""
PREFIXED = ("hparams", "attack")
"""Dict columns whose items are settings: ``hparams.lr``, ``attack.steps``."""
REPORT_FILES = ("report.html", "report.md", "results.csv", "results.jsonl")
MAX_VALUE = 500
"""Parameter values are cut here: the oldest MLflow this supports takes 500 characters."""


@dataclass(frozen=True)
class Tracked:
    """What ``track_study`` did: the experiment, the study run, and the cell runs it logged,
    kept (already there) and replaced (their row changed)."""

    uri: str
    experiment_id: str
    study_run_id: str
    logged: int
    kept: int
    replaced: int

    def line(self) -> str:
        return (f"tracked in MLflow at {self.uri}: {self.logged} cell run(s) logged, "
                f"{self.kept} already there"
                + (f", {self.replaced} replaced (their row changed)" if self.replaced else "")
                + f"; experiment {self.experiment_id}, study run {self.study_run_id}")


def study_kind(rows: list[dict]) -> str:
    """``relearn`` or ``backdoor``, from the rows' columns."""
    if any("condition" in r for r in rows):
        return "backdoor"
    return "relearn"


def experiment_name(kind: str) -> str:
    return f"dormant-{kind}"


def row_hash(row: dict) -> str:
    return hashlib.sha256(json.dumps(row, sort_keys=True).encode()).hexdigest()[:16]


def _key(name: str) -> str:
    """A name MLflow takes as a parameter or metric key (letters, digits, ``_-. /``)."""
    return re.sub(r"[^\w./\- ]", "_", name)[:250]


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return text if len(text) <= MAX_VALUE else text[:MAX_VALUE - 3] + "..."


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _numbers(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(_number(v) for v in value)


def row_record(row: dict) -> tuple[dict[str, str], dict[str, float], dict[str, list]]:
    """A row as MLflow parameters, scalar metrics and curves (``{key: [(step, value)]}``).

    Settings (strings, ``SETTINGS``, the items of ``hparams`` and ``attack``, the pipeline)
    are parameters; numbers and booleans (as 0/1) are metrics; ``curve_forget_acc`` is a
    curve over ``curve_steps``, each LMC line a curve over its points, each calibration
    search a curve over its candidates. Per-example lists (membership scores) stay in the
    row artifact."""
    params: dict[str, str] = {}
    metrics: dict[str, float] = {}
    curves: dict[str, list] = {}
    for key, value in row.items():
        if key in HEAD or value is None or key in ("curve_steps", "curve_forget_acc"):
            continue
        if key in PREFIXED and isinstance(value, dict):
            params.update({f"{key}.{k}": _short(v) for k, v in value.items() if v is not None})
        elif key in SETTINGS or isinstance(value, str):
            params[key] = _short(value)
        elif isinstance(value, bool):
            metrics[key] = float(value)
        elif _number(value):
            metrics[key] = float(value)
        elif key == "pipeline":
            params[key] = _short(value)
        elif key == "calibration" and isinstance(value, list):
            for search in value:
                name = f"calibration.{search.get('stage', 0)}.{search.get('param')}"
                params[name] = _short(search.get("chosen"))
                for part in ("values", "scores", "retain"):
                    if _numbers(search.get(part)):
                        curves[f"{name}.{part}"] = list(enumerate(search[part]))
        elif isinstance(value, dict):  # an LMC line's arrays, a per-group summary
            for k, v in value.items():
                if _numbers(v):
                    curves[f"{key}.{k}"] = list(enumerate(v))
                elif _number(v) or isinstance(v, bool):
                    metrics[f"{key}.{k}"] = float(v)
    steps, accs = row.get("curve_steps"), row.get("curve_forget_acc")
    if _numbers(steps) and _numbers(accs) and len(steps) == len(accs):
        curves["curve_forget_acc"] = list(zip(steps, accs, strict=True))
    return params, metrics, curves


def run_name(row: dict) -> str:
    if "condition" in row:
        return f"{row.get('method')} {row.get('condition')} seed {row.get('seed')}"
    if "relearn_set" in row:
        return (f"{row.get('method')} seed {row.get('seed')} k={row.get('k')} "
                f"{row.get('relearn_set')} lr {row.get('attack_lr')} "
                f"steps {row.get('attack_steps')}")
    return f"{row.get('method')} seed {row.get('seed')}"


# --- verdicts -------------------------------------------------------------------------------


def relearn_verdicts(rows: list[dict]) -> tuple[dict[str, tuple[str, str]], list[dict]]:
    """Each cell's verdict and the group it was decided over, and every verdict as a dict.

    A relearning verdict belongs to a group: one method, forget set, k, relearn set, attack
    learning rate and budget, over the seeds (``experiments.verdicts.GROUP``); every cell of
    the group carries it, as ``results.csv`` does."""
    from dormant.experiments.verdicts import GROUP, verdicts
    from dormant.report.tables import normalize_row, paired

    found = verdicts(paired(rows))
    by_group = {tuple(getattr(v, k) for k in GROUP): v for v in found}
    out = {}
    for r in map(normalize_row, rows):
        v = by_group.get(tuple(r.get(k) for k in GROUP))
        if r.get("status") != "ok":
            out[r["cell"]] = ("none", "the cell failed")
        elif v is None:
            out[r["cell"]] = ("none", "no ok retrain row in its cell to compare with")
        else:
            group = ", ".join(f"{k}={getattr(v, k)}" for k in GROUP)
            out[r["cell"]] = (v.verdict, f"{group}, over {v.n} seed(s)")
    return out, [v.to_dict() for v in found]


def backdoor_verdicts(rows: list[dict]) -> tuple[dict[str, tuple[str, str]], dict]:
    """Each cell's verdict: a backdoor study decides per method (its attack rows against its
    random controls and unpoisoned twin, over seeds), ``woken``, ``activated`` or
    ``not activated``; every cell of that method carries it. Cells of methods without attack
    rows (the poisoned model before any deletion) have none."""
    from dormant.report.backdoor import backdoor_verdict

    found = backdoor_verdict(rows)
    out = {}
    for r in rows:
        m = found["methods"].get(r.get("method"))
        if r.get("status") != "ok":
            out[r["cell"]] = ("none", "the cell failed")
        elif m is None:
            out[r["cell"]] = ("none", "no attack rows of its method")
        else:
            verdict = ("woken" if m["woken"] else "activated" if m["activated"]
                       else "not activated")
            out[r["cell"]] = (verdict, f"method={r.get('method')}: its attack rows, random "
                                       f"controls and unpoisoned twin, over {m['n']} seed(s)")
    return out, found


# --- logging --------------------------------------------------------------------------------


def _log(client, run_id: str, params: dict, metrics: dict, curves: dict, tags: dict) -> None:
    """Everything in as few requests as MLflow's batch limits allow (100 parameters, 1000
    metric points, 100 tags per request)."""
    from mlflow.entities import Metric, Param, RunTag

    now = int(time.time() * 1000)
    points = [Metric(_key(k), v, now, 0) for k, v in metrics.items()]
    points += [Metric(_key(k), float(v), now, int(s)) for k, curve in curves.items()
               for s, v in curve]
    plist = [Param(_key(k), v) for k, v in params.items()]
    tlist = [RunTag(k, str(v)) for k, v in tags.items()]
    # the first request carries the tags and up to 100 parameters; the rest follow
    client.log_batch(run_id, metrics=points[:1000], params=plist[:100], tags=tlist)
    for i in range(1000, len(points), 1000):
        client.log_batch(run_id, metrics=points[i:i + 1000])
    for i in range(100, len(plist), 100):
        client.log_batch(run_id, params=plist[i:i + 100])


def _runs(client, experiment_id: str, study: str) -> list:
    """Every live run of ``study`` in the experiment."""
    from mlflow.entities import ViewType

    query = (f"tags.`dormant.study` = '{study}'" if "'" not in study else "")
    found, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string=query,
                                  run_view_type=ViewType.ACTIVE_ONLY, max_results=1000,
                                  page_token=token)
        found += [r for r in page if r.data.tags.get("dormant.study") == study]
        token = page.token
        if not token:
            return found


def _experiment(client, name: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is None:
        return client.create_experiment(name)
    if exp.lifecycle_stage != "active":
        raise DormantError(f"the MLflow experiment {name!r} is deleted; restore it (mlflow "
                           "experiments restore) or set MLFLOW_EXPERIMENT_NAME to another name")
    return exp.experiment_id


def prepare(tracking_uri: str | None) -> tuple[str, Any]:
    """The resolved URI and a client, checked before any work (MLflow missing, a folder
    that cannot be written, a server that refuses)."""
    from dormant.tracking.client import check_file_store

    uri = resolve_uri(tracking_uri)
    check_file_store(uri)
    client = open_client(uri)
    with quick(uri):
        client.search_experiments(max_results=1)
    return uri, client


def track_study(out: Path, *, tracking_uri: str | None = None, experiment: str | None = None,
                spec: Any = None, command: str | None = None, client: Any = None) -> Tracked:
    """Record the study in ``out`` (its ``results.jsonl`` and report) in MLflow; see the
    module's docstring. ``experiment`` defaults to ``$MLFLOW_EXPERIMENT_NAME``, else
    ``dormant-relearn`` or ``dormant-backdoor``; ``spec`` (the study's settings) is kept as
    ``study.yaml`` on the study run."""
    import os

    from dormant.store.results import latest, read_rows

    out = Path(out)
    rows = latest(read_rows(out / "results.jsonl"))
    if not rows:
        raise DormantError(f"{out} holds no results.jsonl rows to track; run the study first")
    if client is None:
        uri, client = prepare(tracking_uri)
    else:
        uri = tracking_uri or client.tracking_uri
    kind = command or study_kind(rows)
    cells = [r for r in rows if r.get("method") != "shadows"]
    if kind == "backdoor":
        verdict_of, summary = backdoor_verdicts(cells)
    else:
        verdict_of, summary = relearn_verdicts(cells)
    study = str(out.resolve())
    name = experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or experiment_name(kind)
    with mlflow_errors(uri):
        exp_id = _experiment(client, name)
        existing = _runs(client, exp_id, study)
        parent = next((r for r in existing if r.data.tags.get("dormant.kind") == "study"), None)
        if parent is None:
            parent = client.create_run(exp_id, run_name=out.name, tags={
                "dormant.kind": "study", "dormant.study": study, "dormant.command": kind})
            if spec is not None:
                _log(client, parent.info.run_id, _spec_params(spec), {}, {}, {})
        parent_id = parent.info.run_id
        logged: dict[str, list] = {}
        for run in existing:
            if run.data.tags.get("dormant.kind") == "cell":
                logged.setdefault(run.data.tags.get("dormant.cell"), []).append(run)
        made = kept = replaced = 0
        for r in rows:
            verdict, group = verdict_of.get(r["cell"], ("none", "shadow models: no verdict"))
            digest = row_hash(r)
            old = logged.get(r["cell"], [])
            same = [x for x in old if x.data.tags.get("dormant.row_hash") == digest][:1]
            # a run of an older row, a duplicate, or one a crash left half-logged (the hash
            # tag comes last) goes; MLflow keeps deleted runs until they are purged
            for x in old:
                if not same or x.info.run_id != same[0].info.run_id:
                    client.delete_run(x.info.run_id)
            if same:
                kept += 1
                client.set_tag(same[0].info.run_id, "dormant.verdict", verdict)
                client.set_tag(same[0].info.run_id, "dormant.verdict_group", group)
                _report(client, same[0].info.run_id, out)
                continue
            replaced += bool(old)
            made += not old
            run = client.create_run(exp_id, run_name=run_name(r), tags={
                "mlflow.parentRunId": parent_id, "dormant.kind": "cell",
                "dormant.study": study, "dormant.cell": r["cell"]})
            params, metrics, curves = row_record(r)
            tags = {"dormant.status": r.get("status", "ok"), "dormant.verdict": verdict,
                    "dormant.verdict_group": group}
            if r.get("error"):
                tags["dormant.error"] = _short(r["error"])
            _log(client, run.info.run_id, params, metrics, curves, tags)
            _report(client, run.info.run_id, out, r)
            client.set_terminated(run.info.run_id,
                                  "FAILED" if r.get("status") == "failed" else "FINISHED")
            client.set_tag(run.info.run_id, "dormant.row_hash", digest)
        _study_artifacts(client, parent_id, out, spec, summary)
        client.set_terminated(parent_id, "FINISHED")
    return Tracked(uri, exp_id, parent_id, made, kept, replaced)


def _spec_params(spec: Any) -> dict[str, str]:
    """The study's settings, flattened (``trigger.kind``); lists and nested lists whole."""
    data = spec.model_dump(mode="json") if hasattr(spec, "model_dump") else dict(spec)
    out: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif value is not None:
            out[prefix] = _short(value)

    walk("", data)
    return out


def _report(client, run_id: str, out: Path, row: dict | None = None) -> None:
    """The study's report (``report.md``) and, given, the cell's full row, on a cell run."""
    import tempfile

    if (out / "report.md").is_file():
        client.log_artifact(run_id, str(out / "report.md"))
    if row is None:
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "row.json"
        path.write_text(json.dumps(row, indent=1))
        client.log_artifact(run_id, str(path))


def _study_artifacts(client, run_id: str, out: Path, spec: Any, summary: Any) -> None:
    import tempfile

    import yaml

    for name in REPORT_FILES:
        if (out / name).is_file():
            client.log_artifact(run_id, str(out / name))
    for fig in sorted(out.glob("*.png")):
        client.log_artifact(run_id, str(fig), "figures")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "verdicts.json"
        path.write_text(json.dumps(summary, indent=1, default=str))
        client.log_artifact(run_id, str(path))
        if spec is not None:
            data = spec.model_dump(mode="json") if hasattr(spec, "model_dump") else spec
            path = Path(tmp) / "study.yaml"
            path.write_text(yaml.safe_dump(data, sort_keys=False))
            client.log_artifact(run_id, str(path))
