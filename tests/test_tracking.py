"""MLflow tracking (issue 26): a digits study with ``--track mlflow`` read back run by run
with MLflow's own client, and a model store mirrored into the MLflow Model Registry, whose
tampering ``dormant ledger verify`` reports. Everything goes to a temporary ``mlruns/``
folder (MLflow's file store, no server)."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest

from dormant.cli import main

mlflow = pytest.importorskip("mlflow")
from mlflow.tracking import MlflowClient  # noqa: E402

STUDY = ["relearn", "--dataset", "digits", "--methods", "finetune", "--k", "0",
         "--train-steps", "20", "--unlearn-steps", "5", "--attack-steps", "6",
         "--calibrate", "none", "--no-analysis", "--seeds", "0,1", "--device", "cpu"]
"""test_cli.py's smallest two-seed study: in one session the two share their models through
the session's cache (a verdict needs two seeds)."""


def _client(uri: Path) -> MlflowClient:
    return MlflowClient(tracking_uri=uri.as_uri(), registry_uri=uri.as_uri())


def _one_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


# --- a study, tracked -------------------------------------------------------------------------


@pytest.mark.slow
def test_a_tracked_study_is_one_run_per_cell_with_its_row_verdict_and_report(
        tmp_path, tmp_path_factory, monkeypatch, capsys):
    cache = tmp_path_factory.getbasetemp() / "dormant-cache"  # as in test_cli.py
    cache.mkdir(exist_ok=True)
    monkeypatch.setenv("DORMANT_CACHE", str(cache))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    out, uri = tmp_path / "study", tmp_path / "mlruns"
    args = [*STUDY, "--out", str(out), "--track", "mlflow", "--tracking-uri", str(uri)]
    assert main(args) == 0
    assert "tracked in MLflow at " in capsys.readouterr().out
    rows = {r["cell"]: r for r in map(json.loads, (out / "results.jsonl").read_text()
                                      .splitlines())}
    with open(out / "results.csv") as f:  # the report's own verdict column
        verdict = {r["cell"]: r["verdict"] for r in csv.DictReader(f)}
    client = _client(uri)
    exp = client.get_experiment_by_name("dormant-relearn")
    runs = client.search_runs([exp.experiment_id])
    cells = [r for r in runs if r.data.tags.get("dormant.kind") == "cell"]
    (study,) = [r for r in runs if r.data.tags.get("dormant.kind") == "study"]
    assert len(rows) == 6 and sorted(r.data.tags["dormant.cell"] for r in cells) == sorted(rows)
    report = (out / "report.md").read_bytes()
    for run in cells:
        row = rows[run.data.tags["dormant.cell"]]
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlflow.parentRunId"] == study.info.run_id
        # every measurement, exactly as the row holds it
        for key in ("retain_acc", "forget_acc", "test_acc", "forget_acc_attacked_end",
                    "recovery", "l2_to_original", "train_fit_acc"):
            assert run.data.metrics[key] == row[key], key
        history = client.get_metric_history(run.info.run_id, "curve_forget_acc")
        assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == list(
            zip(row["curve_steps"], row["curve_forget_acc"], strict=True))
        assert run.data.params["method"] == row["method"]
        assert run.data.params["seed"] == str(row["seed"])
        assert {k.removeprefix("hparams."): v for k, v in run.data.params.items()
                if k.startswith("hparams.")} == {k: str(v) for k, v in row["hparams"].items()}
        # the verdict of the cell's group (method, forget set, k, attack, over the seeds)
        assert run.data.tags["dormant.verdict"] == verdict[row["cell"]] != ""
        assert "over 2 seed(s)" in run.data.tags["dormant.verdict_group"]
        local = client.download_artifacts(run.info.run_id, "report.md", str(tmp_path))
        assert Path(local).read_bytes() == report
    finetune = [r for r in cells if r.data.params["method"] == "finetune"]
    assert {"hparams.steps", "hparams.lr"} <= set(finetune[0].data.params)
    kept = {a.path for a in client.list_artifacts(study.info.run_id)}
    assert {"report.html", "report.md", "results.csv", "verdicts.json", "study.yaml"} <= kept

    # tracking the study again, as its resumed command does once no cell is left to run,
    # logs nothing twice
    from dormant.tracking.study import track_study

    done = track_study(out, tracking_uri=str(uri))
    assert (done.logged, done.kept, done.replaced) == (0, 6, 0)
    assert done.study_run_id == study.info.run_id
    assert len(client.search_runs([exp.experiment_id])) == len(runs) == 7

    # a cell whose row changed (a retried transient failure) is logged again, once
    cell = cells[0].data.tags["dormant.cell"]
    newer = {**rows[cell], "forget_acc": rows[cell]["forget_acc"] + 1.5}
    with open(out / "results.jsonl", "a") as f:
        f.write(json.dumps(newer) + "\n")
    done = track_study(out, tracking_uri=str(uri))
    assert (done.logged, done.kept, done.replaced) == (0, 5, 1)
    live = [r for r in client.search_runs([exp.experiment_id])
            if r.data.tags.get("dormant.cell") == cell]
    assert len(live) == 1 and live[0].data.metrics["forget_acc"] == newer["forget_acc"]
    assert client.get_run(cells[0].info.run_id).info.lifecycle_stage == "deleted"


def test_a_row_splits_into_settings_measurements_and_curves():
    from dormant.tracking.study import row_record

    row = {"cell": "c1", "status": "ok", "error": None, "transient": False,
           "dataset": "digits", "method": "finetune", "seed": 1, "k": 5, "attack_lr": 1e-4,
           "hparams": {"lr": 1e-3, "steps": 20}, "pipeline": [["finetune", {"lr": 1e-3}]],
           "forget_acc": 12.5, "train_steps": 60, "armed": True, "mia_auc": None,
           "curve_steps": [5, 10], "curve_forget_acc": [10.0, 20.0],
           "lmc": {"t": [0.0, 1.0], "retain_loss": [0.3, 0.2]},
           "calibration": [{"stage": 0, "param": "lr", "values": [1e-4, 1e-3],
                            "scores": [50.0, 40.0], "chosen": 1e-3}],
           "lira_forget_scores": [0.1, 0.2], "nc_flagged_before": [3]}
    params, metrics, curves = row_record(row)
    assert params == {"dataset": "digits", "method": "finetune", "seed": "1", "k": "5",
                      "attack_lr": "0.0001", "hparams.lr": "0.001", "hparams.steps": "20",
                      "pipeline": '[["finetune", {"lr": 0.001}]]',
                      "calibration.0.lr": "0.001"}
    assert metrics == {"forget_acc": 12.5, "train_steps": 60.0, "armed": 1.0}
    assert curves == {"curve_forget_acc": [(5, 10.0), (10, 20.0)],
                      "lmc.t": [(0, 0.0), (1, 1.0)], "lmc.retain_loss": [(0, 0.3), (1, 0.2)],
                      "calibration.0.lr.values": [(0, 1e-4), (1, 1e-3)],
                      "calibration.0.lr.scores": [(0, 50.0), (1, 40.0)]}


def test_tracking_flags_are_checked_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DORMANT_CACHE", str(tmp_path / "cache"))
    out = str(tmp_path / "out")
    assert main([*STUDY, "--out", out, "--tracking-uri", str(tmp_path / "m")]) == 2
    assert "--tracking-uri goes with --track mlflow" in _one_line(capsys.readouterr().err)
    assert main([*STUDY, "--out", out, "--track", "wandb"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "--track" in line and "mlflow" in line
    # a server that does not answer fails the check in seconds, not after MLflow's retries
    assert main([*STUDY, "--out", out, "--track", "mlflow", "--tracking-uri",
                 "http://127.0.0.1:9"]) == 2
    assert "MLflow at http://127.0.0.1:9 does not answer" in _one_line(capsys.readouterr().err)
    (tmp_path / "afile").write_text("x")
    assert main([*STUDY, "--out", out, "--track", "mlflow", "--tracking-uri",
                 str(tmp_path / "afile")]) == 2
    assert "is a file" in _one_line(capsys.readouterr().err)
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if the extra were not installed
    assert main([*STUDY, "--out", out, "--track", "mlflow"]) == 2
    assert "pip install 'dormant[mlflow]'" in _one_line(capsys.readouterr().err)
    assert not Path(out).exists() and not (tmp_path / "cache" / "models").exists()


# --- the registry mirror -----------------------------------------------------------------------


def _request(st, name: str, ids: list[int], *, promoted: bool, verdict: str) -> str:
    """A deletion request's rows as the request flow writes them (started, finished with its
    unlearned checkpoint), with an untrained model standing in for the unlearned one: what
    the mirror reads is the ledger, not the weights."""
    from dormant.models import ModelSpec, create_model

    base = st.resolve(name)
    rid = f"req{len(st.ledger):04d}"
    with st.lock():
        version = st.next_version(name)
        spec = ModelSpec("mlp", 1, 10, 8)
        rel, sha = st.write_version(name, version, create_model(spec, seed=version), spec, {})
        st.ledger.append("request-started", {"from_version": base.version,
                                             "to_version": version, "ids": ids,
                                             "method": "retrain"}, request_id=rid, model=name)
        st.ledger.append("request-finished", {
            "from_version": base.version, "to_version": version, "ids": ids,
            "method": "retrain", "verdict": verdict, "promoted": promoted,
            "files": [{"path": base.rel, "sha256": base.sha256, "role": "original"},
                      {"path": rel, "sha256": sha, "role": "unlearned"}]},
            request_id=rid, model=name)
    return rid


@pytest.fixture
def store(tmp_path) -> Path:
    """``digits`` v1 added through the CLI, v2 from a promoted request, v3 from one a
    warning kept back."""
    from dormant.models import ModelSpec, create_model
    from dormant.requests import ModelStore
    from dormant.store.checkpoint import save_checkpoint

    spec = ModelSpec("mlp", 1, 10, 8)
    ckpt = save_checkpoint(tmp_path / "m.safetensors", create_model(spec, seed=0), spec)
    assert main(["store", "add", str(tmp_path / "store"), "digits", str(ckpt)]) == 0
    st = ModelStore(tmp_path / "store")
    _request(st, "digits", [1, 2, 3], promoted=True, verdict="pass")
    _request(st, "digits", [4, 5], promoted=False, verdict="warn")
    return tmp_path / "store"


def test_the_registry_mirrors_the_ledger_and_verify_reports_a_tampered_mirror(
        store, tmp_path, capsys):
    from dormant.requests import Ledger

    uri = tmp_path / "mlruns"
    assert main(["store", "mirror", str(store), "digits", "--tracking-uri", str(uri)]) == 0
    shown = " ".join(capsys.readouterr().out.split())
    assert "registered v1, v2, v3; alias 'champion' moved to v2" in shown
    rows = Ledger(store / "ledger.sqlite").entries()
    wrote = {e.payload["version"]: e for e in rows if e.kind == "model-added"}
    wrote |= {e.payload["to_version"]: e for e in rows if e.kind == "request-finished"}
    client = _client(uri)
    versions = {int(mv.tags["dormant.version"]): mv
                for mv in client.search_model_versions("name = 'digits'")}
    assert sorted(versions) == [1, 2, 3]
    for v, mv in versions.items():
        assert mv.tags["dormant.ledger_hash"] == wrote[v].hash
        assert mv.tags["dormant.ledger_row"] == str(wrote[v].seq)
        assert mv.tags["dormant.requests"] == (wrote[v].request_id or "-")
    assert [versions[v].tags["dormant.verdict"] for v in (1, 2, 3)] == ["added", "pass", "warn"]
    assert [versions[v].tags["dormant.promoted"] for v in (1, 2, 3)] == ["true", "true",
                                                                         "false"]
    # the alias sits on the promoted v2, not on the newer v3 a warning kept back
    assert client.get_model_version_by_alias("digits", "champion").version == \
        versions[2].version
    files = {a.path for a in client.list_artifacts(versions[3].run_id, "checkpoint")}
    assert files == {"checkpoint/v3.safetensors", "checkpoint/v3.json"}
    assert main(["ledger", "verify", str(store)]) == 0
    assert "1 registry mirror(s) in agreement" in " ".join(capsys.readouterr().out.split())

    # tampering with the registry: a tag changed, the alias moved, a version deleted
    client.set_model_version_tag("digits", versions[1].version, "dormant.ledger_hash", "0" * 64)
    client.set_registered_model_alias("digits", "champion", versions[3].version)
    client.delete_model_version("digits", versions[2].version)
    assert main(["ledger", "verify", str(store)]) == 1
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("MIRROR ")]
    assert len(lines) == 3, lines
    assert "tag dormant.ledger_hash is '0000" in lines[0] and wrote[1].hash in lines[0]
    assert "digits v2 is missing from the registry" in lines[1]
    assert "alias 'champion' is on 'digits' version 3 (digits v3)" in lines[2]
    assert "current version is digits v2" in lines[2]

    # a sync puts the registry back in line; the ledger is the authority
    assert main(["store", "mirror", str(store), "digits"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "registered v2; alias 'champion' moved to v2" in out and "tag dormant.ledger_hash" \
        in out
    assert main(["ledger", "verify", str(store)]) == 0
    # a command that changes the store syncs its mirror: a new lineage is current at once
    assert main(["store", "add", str(store), "digits", str(tmp_path / "m.safetensors"),
                 "--new-lineage", "retrained without every deleted id"]) == 0
    assert "registered v4; alias 'champion' moved to v4" in " ".join(
        capsys.readouterr().out.split())
    # given the ledger file rather than the store, verify finds the store beside it
    assert main(["ledger", "verify", str(store / "ledger.sqlite")]) == 0
    assert "1 registry mirror(s) in agreement" in " ".join(capsys.readouterr().out.split())


def test_approving_a_kept_version_moves_the_alias_through_the_mirror(store, tmp_path, capsys):
    from dormant.requests import Ledger

    uri = tmp_path / "mlruns"
    for bad, why in ((store / "mlruns", "is inside the model store"),
                     (uri, "is not an MLflow alias")):
        assert main(["store", "mirror", str(store), "digits", "--tracking-uri", str(bad),
                     "--alias", "prod" if bad != uri else "v2"]) == 2
        assert why in _one_line(capsys.readouterr().err)
    assert not Ledger(store / "ledger.sqlite").entries(kind="registry-mirror")
    assert main(["store", "mirror", str(store), "digits", "--tracking-uri", str(uri),
                 "--registered-model", "team.digits", "--alias", "prod"]) == 0
    rid = Ledger(store / "ledger.sqlite").entries(kind="request-finished")[-1].request_id
    assert main(["approve", "--store", str(store), "--request", rid, "--by", "dpo",
                 "--comment", "reviewed"]) == 0
    assert "alias 'prod' moved to v3" in " ".join(capsys.readouterr().out.split())
    client = _client(uri)
    on = client.get_model_version_by_alias("team.digits", "prod")
    assert on.tags["dormant.version"] == "3" and on.tags["dormant.promoted"] == "true"
    approved = Ledger(store / "ledger.sqlite").entries(kind="version-approved")[-1]
    assert on.tags["dormant.sign_off"].endswith(f"({approved.hash})")
    assert main(["ledger", "verify", str(store)]) == 0
    # the bytes a deployment would load from the registry are the ledger's, or verify fails
    served = Path(client.get_run(on.run_id).info.artifact_uri.removeprefix("file://"))
    (served / "checkpoint" / "v3.safetensors").write_bytes(b"not the ledger's weights")
    capsys.readouterr()
    assert main(["ledger", "verify", str(store)]) == 1
    (line,) = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("MIRROR ")]
    assert "(digits v3, current): its checkpoint has sha256" in line
    assert "the registry's copy was replaced" in " ".join(line.split())
    assert main(["ledger", "verify", str(store), "--no-mirror"]) == 0
    # the mirror is in the ledger: a verify without MLflow cannot skip it silently
    capsys.readouterr()
    sys.modules["mlflow"], saved = None, sys.modules["mlflow"]
    try:
        assert main(["ledger", "verify", str(store)]) == 2
    finally:
        sys.modules["mlflow"] = saved
    assert "pip install 'dormant[mlflow]'" in _one_line(capsys.readouterr().err)
    # a mirror stopped (recorded in the ledger) is no longer checked, nor synced
    assert main(["store", "mirror", str(store), "digits", "--stop"]) == 0
    assert Ledger(store / "ledger.sqlite").entries(kind="registry-mirror")[-1].payload[
        "active"] is False
    capsys.readouterr()
    assert main(["ledger", "verify", str(store)]) == 0
    assert "registry mirror" not in capsys.readouterr().out
