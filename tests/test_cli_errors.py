"""Bad input to the CLI: exit code 2, exactly one ``error: ...`` line on stderr naming the
problem, no traceback, and nothing already written is lost.

Most cases run in-process through ``dormant.cli.main`` for speed; a few go through the real
entry points (``python -m dormant`` and the ``dormant`` console script) to prove they behave
the same.
"""

from __future__ import annotations

import math
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch

from dormant.cli import main
from dormant.models import ModelSpec, create_model
from dormant.store import save_checkpoint


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One DORMANT_CACHE for the whole session (same path as in test_cli.py), so the digits
    original and oracle are trained once."""
    path = tmp_path_factory.getbasetemp() / "dormant-cache"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture(autouse=True)
def _env(cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DORMANT_CACHE", str(cache_dir))
    monkeypatch.chdir(tmp_path)  # anything written to a default runs/ folder lands here


def _check(rc: int, out: str, err: str, *needles: str) -> str:
    assert rc == 2, f"exit code {rc}\nstdout:\n{out}\nstderr:\n{err}"
    assert "Traceback" not in out + err
    lines = err.splitlines()
    assert len(lines) == 1, f"want one stderr line, got {len(lines)}:\n{err}"
    line = lines[0]
    assert line.startswith("error: ") and len(line) > len("error: ") + 10, line
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"
    return line


def _fails(capsys: pytest.CaptureFixture[str], args: list[str], *needles: str) -> str:
    capsys.readouterr()
    rc = main([str(a) for a in args])
    cap = capsys.readouterr()
    return _check(rc, cap.out, cap.err, *needles)


def _subprocess(args: list, cache_dir: Path, cwd: Path, exe: list[str] | None = None):
    env = {**os.environ, "DORMANT_CACHE": str(cache_dir)}
    cmd = (exe or [sys.executable, "-m", "dormant"]) + [str(a) for a in args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


@pytest.fixture(scope="module")
def digits_ckpt(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Path:
    """A briefly trained digits checkpoint made by ``dormant train`` (in-process)."""
    out = tmp_path_factory.mktemp("ckpt")
    old = os.environ.get("DORMANT_CACHE")
    os.environ["DORMANT_CACHE"] = str(cache_dir)
    try:
        rc = main(["train", "--dataset", "digits", "--steps", "10", "--out", str(out),
                   "--device", "cpu"])
    finally:
        if old is None:
            del os.environ["DORMANT_CACHE"]
        else:
            os.environ["DORMANT_CACHE"] = old
    assert rc == 0
    return out / "model.safetensors"


def _unlearn(ckpt: Path, out: Path, *extra: str) -> list[str]:
    return ["unlearn", str(ckpt), "--method", "gradient_ascent", "--dataset", "digits",
            "--steps", "2", "--out", str(out), "--device", "cpu", *extra]


def _relearn(out: Path, *extra: str) -> list[str]:
    """A tiny digits study: short budgets so the cases that get as far as training stay fast
    whether or not another test already filled the model cache."""
    return ["relearn", "--dataset", "digits", "--methods", "gradient_ascent", "--k", "0",
            "--train-steps", "60", "--unlearn-steps", "5", "--attack-steps", "5",
            "--out", str(out), "--device", "cpu", *extra]


# --- unknown names -----------------------------------------------------------------------------


def test_unknown_dataset(capsys, tmp_path: Path) -> None:
    _fails(capsys, _relearn(tmp_path / "o", "--dataset", "nope"), "unknown dataset", "'nope'")


def test_unknown_dataset_real_entry_points(cache_dir: Path, tmp_path: Path) -> None:
    args = _relearn(tmp_path / "o", "--dataset", "nope")
    res = _subprocess(args, cache_dir, tmp_path)
    _check(res.returncode, res.stdout, res.stderr, "unknown dataset", "'nope'")
    script = Path(sys.executable).with_name("dormant")
    assert script.is_file(), f"console script {script} is not installed"
    res = _subprocess(args, cache_dir, tmp_path, exe=[str(script)])
    _check(res.returncode, res.stdout, res.stderr, "unknown dataset", "'nope'")


def test_unknown_model(capsys, tmp_path: Path) -> None:
    _fails(capsys, _relearn(tmp_path / "o", "--model", "nope"), "unknown model", "'nope'")


def test_unknown_method_relearn(capsys, tmp_path: Path) -> None:
    _fails(capsys, _relearn(tmp_path / "o", "--methods", "nope"), "unknown method", "'nope'")
    assert not (tmp_path / "o" / "results.jsonl").exists()


def test_unknown_method_unlearn(capsys, tmp_path: Path, digits_ckpt: Path) -> None:
    args = _unlearn(digits_ckpt, tmp_path / "u")
    args[args.index("gradient_ascent")] = "nope"
    _fails(capsys, args, "unknown method", "'nope'")
    assert not (tmp_path / "u").exists()


# --- forget specs ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "needle"),
    [("class:x", "does not parse"), ("random:", "does not parse"),
     ("class:1:atypical:2", "fraction")],
)
def test_bad_forget_spec(capsys, tmp_path: Path, spec: str, needle: str) -> None:
    _fails(capsys, _relearn(tmp_path / "o", "--forget", spec), repr(spec), needle)


@pytest.mark.parametrize(
    ("content", "needles"),
    [
        ("1\n2\n99999\n", ("out of range", "99999")),
        ("3\n4\n3\n", ("more than once", "id 3")),
        ("3\n4\nfive\n", ("not an integer", "'five'")),
        ("\n  \n", ("empty",)),
    ],
    ids=["out-of-range", "duplicated", "not-integers", "empty"],
)
def test_bad_ids_file_unlearn(capsys, tmp_path: Path, digits_ckpt: Path, content: str,
                              needles: tuple[str, ...]) -> None:
    ids = tmp_path / "ids.txt"
    ids.write_text(content)
    _fails(capsys, _unlearn(digits_ckpt, tmp_path / "u", "--forget", f"ids:{ids}"),
           "ids file", *needles)
    assert not (tmp_path / "u" / "unlearned.safetensors").exists()


def test_bad_ids_file_relearn(capsys, tmp_path: Path) -> None:
    ids = tmp_path / "ids.txt"
    ids.write_text("0, 1, 5000\n")
    _fails(capsys, _relearn(tmp_path / "o", "--forget", f"ids:{ids}"),
           "ids file", "out of range", "5000")


# --- missing paths -----------------------------------------------------------------------------


def test_missing_checkpoint(capsys, tmp_path: Path) -> None:
    _fails(capsys, _unlearn(Path("/no/such.safetensors"), tmp_path / "u"),
           "/no/such.safetensors", "does not exist")


@pytest.mark.parametrize("command", ["relearn", "train", "unlearn"])
def test_missing_data_root(capsys, tmp_path: Path, digits_ckpt: Path, command: str) -> None:
    if command == "relearn":
        args = _relearn(tmp_path / "o")
    elif command == "train":
        args = ["train", "--dataset", "digits", "--steps", "1", "--out", str(tmp_path / "o"),
                "--device", "cpu"]
    else:
        args = _unlearn(digits_ckpt, tmp_path / "o")
    _fails(capsys, [*args, "--data-root", "/no/such"], "/no/such", "does not exist")
    assert not (tmp_path / "o").exists()


def test_missing_study_file(capsys, tmp_path: Path) -> None:
    _fails(capsys, ["relearn", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "o")],
           "nope.yaml", "does not exist")


def test_missing_ids_file(capsys, tmp_path: Path, digits_ckpt: Path) -> None:
    _fails(capsys, _unlearn(digits_ckpt, tmp_path / "u", "--forget", "ids:/no/such.txt"),
           "/no/such.txt", "does not exist")


# --- checkpoints that do not fit, or are not checkpoints ---------------------------------------


def test_checkpoint_of_another_architecture(capsys, tmp_path: Path) -> None:
    spec = ModelSpec("cnn-small", 1, 10, 8)
    with_sidecar = save_checkpoint(tmp_path / "cnn.safetensors", create_model(spec, seed=0), spec)
    _fails(capsys, _unlearn(with_sidecar, tmp_path / "u", "--model", "mlp"),
           "cnn-small", "mlp")
    bare = tmp_path / "bare" / "cnn.safetensors"
    bare.parent.mkdir()
    safetensors.torch.save_file(create_model(spec, seed=0).state_dict(), str(bare))
    _fails(capsys, _unlearn(bare, tmp_path / "u", "--model", "mlp"), "does not fit", "'mlp'")
    assert not (tmp_path / "u").exists()


def test_checkpoint_with_another_class_count(capsys, tmp_path: Path) -> None:
    path = tmp_path / "mlp3.safetensors"
    state = create_model(ModelSpec("mlp", 1, 3, 8), seed=0).state_dict()
    safetensors.torch.save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    assert not path.with_suffix(".json").exists()
    _fails(capsys, _unlearn(path, tmp_path / "u", "--model", "mlp"), str(path), "10 classes")


class _Evil:
    """Unpickling this runs ``open(marker, 'w')``: the marker's existence proves code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize(
    ("name", "how"),
    [("evil.pkl", "pickle"), ("evil.safetensors", "pickle"),
     ("evil0.safetensors", "pickle-protocol-0"), ("evil.pt", "torch.save")],
)
def test_pickle_checkpoint_is_never_unpickled(capsys, tmp_path: Path, name: str,
                                              how: str) -> None:
    marker = tmp_path / "MARKER"
    path = tmp_path / name
    payload = {"weight": _Evil(marker)}
    if how == "torch.save":
        torch.save(payload, path)
        assert path.read_bytes()[:4] == b"PK\x03\x04"
    else:
        with open(path, "wb") as f:
            pickle.dump(payload, f, protocol=0 if how.endswith("0") else pickle.HIGHEST_PROTOCOL)
    assert not marker.exists()
    _fails(capsys, _unlearn(path, tmp_path / "u", "--model", "mlp"), str(path))
    assert not marker.exists(), "the checkpoint was unpickled: its payload ran"
    assert not (tmp_path / "u").exists()


def test_pickle_checkpoint_real_entry_point(cache_dir: Path, tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    path = tmp_path / "evil.pt"
    torch.save({"weight": _Evil(marker)}, path)
    res = _subprocess(_unlearn(path, tmp_path / "u", "--model", "mlp"), cache_dir, tmp_path)
    _check(res.returncode, res.stdout, res.stderr, str(path))
    assert not marker.exists()


# --- budgets and k -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["relearn", "--train-steps", "0"], "--train-steps"),
        (["relearn", "--attack-steps", "-5"], "--attack-steps"),
        (["relearn", "--unlearn-steps", "0"], "--unlearn-steps"),
        (["train", "--steps", "0"], "--steps"),
        (["unlearn", "CKPT", "--method", "gradient_ascent", "--steps", "0"], "--steps"),
    ],
    ids=["train-steps", "attack-steps", "unlearn-steps", "train", "unlearn"],
)
def test_non_positive_steps(capsys, tmp_path: Path, digits_ckpt: Path, args: list[str],
                            needle: str) -> None:
    args = [str(digits_ckpt) if a == "CKPT" else a for a in args]
    line = _fails(capsys, [*args, "--out", str(tmp_path / "o"), "--device", "cpu"], needle,
                  "positive")
    assert line.rsplit(" ", 1)[-1] in ("0", "-5")
    assert not (tmp_path / "o").exists()


def test_k_not_integers(capsys, tmp_path: Path) -> None:
    _fails(capsys, _relearn(tmp_path / "o", "--k", "a,b"), "--k", "'a,b'")


def test_k_larger_than_leakable_pool(capsys, tmp_path: Path) -> None:
    _fails(capsys, _relearn(tmp_path / "o", "--k", "1000"), "k=1000", "leakable")
    assert not (tmp_path / "o" / "results.jsonl").exists()


@pytest.mark.parametrize("command", ["relearn", "train", "unlearn"])
def test_non_positive_train_size(capsys, tmp_path: Path, digits_ckpt: Path,
                                 command: str) -> None:
    args = {"relearn": _relearn(tmp_path / "o"),
            "train": ["train", "--out", str(tmp_path / "o"), "--device", "cpu"],
            "unlearn": _unlearn(digits_ckpt, tmp_path / "o")}[command]
    _fails(capsys, [*args, "--train-size", "0"], "--train-size", "positive")
    assert not (tmp_path / "o").exists()


def test_empty_methods_list(capsys, tmp_path: Path) -> None:
    """``--methods ""`` names no method; it must not silently run the default ones."""
    _fails(capsys, _relearn(tmp_path / "o", "--methods", ""), "unknown method", "''")
    assert not (tmp_path / "o" / "results.jsonl").exists()


@pytest.mark.parametrize("command", ["demo", "relearn", "train", "unlearn"])
def test_out_is_a_file(capsys, tmp_path: Path, digits_ckpt: Path, command: str) -> None:
    out = tmp_path / "taken"
    out.write_text("keep me\n")
    args = {"demo": ["demo", "--out", str(out), "--device", "cpu"],
            "relearn": _relearn(out),
            "train": ["train", "--out", str(out), "--steps", "1", "--device", "cpu"],
            "unlearn": _unlearn(digits_ckpt, out)}[command]
    _fails(capsys, args, str(out), "is a file")
    assert out.read_text() == "keep me\n"


# --- study files -------------------------------------------------------------------------------


def test_study_unknown_key(capsys, tmp_path: Path) -> None:
    study = tmp_path / "study.yaml"
    study.write_text("dataset: digits\nmethods: [gradient_ascent]\nattack_stepz: 10\n")
    _fails(capsys, ["relearn", str(study), "--out", str(tmp_path / "o")],
           "study.yaml", "attack_stepz")


@pytest.mark.parametrize("text", ["- digits\n- mnist\n", "just a string\n", "42\n"])
def test_study_not_a_mapping(capsys, tmp_path: Path, text: str) -> None:
    study = tmp_path / "study.yaml"
    study.write_text(text)
    _fails(capsys, ["relearn", str(study), "--out", str(tmp_path / "o")], "study.yaml",
           "mapping")


def test_study_invalid_yaml(capsys, tmp_path: Path) -> None:
    study = tmp_path / "study.yaml"
    study.write_text("methods: [gradient_ascent\nk: 0\n")
    _fails(capsys, ["relearn", str(study), "--out", str(tmp_path / "o")], "study.yaml", "YAML")


# --- nothing already written is lost -----------------------------------------------------------


def test_failing_run_keeps_earlier_results(capsys, tmp_path: Path) -> None:
    out = tmp_path / "study"
    assert main(_relearn(out)) == 0
    results = out / "results.jsonl"
    before = results.read_bytes()
    assert len(before.splitlines()) == 3  # original, retrain, gradient_ascent at k=0
    listing = sorted(p.name for p in out.iterdir())
    _fails(capsys, _relearn(out, "--k", "0,1000"), "k=1000")
    _fails(capsys, _relearn(out, "--k", "a,b"), "--k")
    _fails(capsys, _relearn(out, "--methods", "gradient_ascent,nope"), "'nope'")
    assert results.read_bytes() == before
    assert sorted(p.name for p in out.iterdir()) == listing


def test_damaged_results_file(capsys, tmp_path: Path) -> None:
    """A results.jsonl with a line that is not JSON (a hand edit, a foreign tool) is bad
    input like any other: one line naming the file, exit 2, and the file left as it is."""
    out = tmp_path / "study"
    out.mkdir()
    results = out / "results.jsonl"
    results.write_text('{"method": "original", "k": 0}\n{"method": "retr\n')
    before = results.read_bytes()
    _fails(capsys, _relearn(out), "results.jsonl")
    assert results.read_bytes() == before


@pytest.mark.parametrize("body, needles", [
    ("methods: [finetune, nope]\n", ["unknown method 'nope'"]),
    ("methods: [finetune]\nlearning_rate: 3\n", ["key 'learning_rate'", "unknown key"]),
    ("methods:\n  - {name: a, method: finetune, steps: 3}\n",
     ["key 'methods.0.steps'", "unknown key"]),
    ("methods:\n  - {name: a, method: finetune, hparams: {lr: fast}}\n",
     ["entry 'a'", "hyper-parameter 'lr'"]),
    ("methods: [finetune]\nhparams: {finetune: {steps: 2.5}}\n", ["hyper-parameter 'steps'"]),
    ("methods: []\n", ["key 'methods'", "must not be empty"]),
    ("methods: [finetune]\nseeds: []\n", ["key 'seeds'", "must not be empty"]),
    ("methods:\n  - {name: a, method: finetune, then: b}\n"
     "  - {name: b, method: scrub, then: a}\n", ["then: chain loops: a -> b -> a"]),
    ("relearn_sets: [retain, train]\n", ["key 'relearn_sets.1'", "'train'"]),
    ("attack_lr: [1e-4, -1]\n", ["key 'attack_lr.1'", "must be positive, got -1"]),
], ids=["unknown-method", "unknown-key", "unknown-entry-key", "entry-hparam-type",
        "hparam-type", "empty-methods", "empty-seeds", "then-loop", "relearn-set", "attack-lr"])
def test_bad_study_file(capsys, tmp_path: Path, body: str, needles: list[str]) -> None:
    study = tmp_path / "study.yaml"
    study.write_text("dataset: digits\n" + body)
    out = tmp_path / "o"
    _fails(capsys, ["relearn", str(study), "--out", str(out), "--device", "cpu"], *needles)
    assert not (out / "results.jsonl").exists()


def _backdoor(out: Path, *extra: str) -> list[str]:
    return ["backdoor", "--dataset", "digits", "--model", "mlp", "--seeds", "0", "--out", out,
            "--methods", "bad_teacher", "--public", "0", "--counterweights", "0", *extra]


@pytest.mark.parametrize(("extra", "needles"), [
    (["--amplitude", "1.5"], ["--amplitude", "less than or equal to 1"]),
    (["--amplitude", "-0.1"], ["--amplitude", "greater than or equal to 0"]),
    (["--trigger", "patch", "--trigger-size", "9"], ["9x9 patch does not fit 8x8"]),
    (["--trigger", "stars"], ["--trigger", "unknown trigger 'stars'"]),
    (["--target", "12"], ["target class 12 does not exist", "0..9"]),
    (["--poisons", "500"], ["500 poisons per class", "contribution holds only"]),
    (["--request", "5000"], ["request of 5000 clean images"]),
    (["--conditions", "attack,bogus"], ["--conditions", "unknown condition 'bogus'"]),
    (["--conditions", "random-clean"], ["--conditions", "add the attack condition"]),
    (["--strategy", "pixels"], ["--strategy", "unknown request strategy 'pixels'"]),
    # digits trains on its whole training split: nothing is left for a public sample
    (["--public", "5000"], ["public sample of 5000 images asked", "lower public"]),
    (["--counterweights", "10"], ["counterweights come from the attacker's public sample"]),
    (["--poison-choice", "best"], ["--poison-choice", "'random' or 'influence'"]),
])
def test_bad_backdoor_input(capsys, tmp_path: Path, extra, needles) -> None:
    out = tmp_path / "o"
    _fails(capsys, _backdoor(out, *extra), *needles)
    assert not (out / "results.jsonl").exists()  # refused before any work


def test_backdoor_study_file_key_is_named(capsys, tmp_path: Path) -> None:
    study = tmp_path / "s.yaml"
    study.write_text("dataset: digits\ntrigger: {kind: noise, amplitude: 2}\n")
    _fails(capsys, ["backdoor", study, "--out", tmp_path / "o"], "key 'trigger.amplitude'",
           "less than or equal to 1")


# --- one loader: --set, file encoding and duplicate keys, executor flags -----------------------


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> dict:
    """Stops relearn and backdoor right where the study would start, keeping what they would
    have run: the spec and the executor options the flags and ``--set`` built."""
    import dormant.cli
    import dormant.experiments
    from dormant.errors import DormantError

    got: dict = {}

    def run(spec, out, *, executor=None, **_):
        got.update(spec=spec, executor=executor)
        raise DormantError("stopped before the study ran")

    monkeypatch.setattr(dormant.experiments, "run_relearn", run)
    monkeypatch.setattr(dormant.experiments, "run_backdoor", run)
    # the plan line expands the grid, with every check of the data: not what is tested here
    monkeypatch.setattr(dormant.cli, "study_line", lambda *a, **k: "plan")
    return got


def test_set_reaches_nested_keys_of_the_spec(capsys, tmp_path: Path, captured: dict) -> None:
    study = tmp_path / "s.yaml"
    study.write_text("dataset: digits\nk: [0, 5]\nhparams: {finetune: {steps: 3}}\n")
    _fails(capsys, ["relearn", study, "--k", "1", "--set", "hparams.finetune.lr=1e-4",
                    "--set", "train_recipe.augment=none", "--set", "seeds=[2, 3]",
                    "--out", tmp_path / "o"], "stopped")
    spec = captured["spec"]
    assert spec.hparams == {"finetune": {"steps": 3, "lr": 1e-4}}  # merged into the file's
    assert spec.train_recipe == {"augment": "none"} and spec.seeds == [2, 3] and spec.k == [1]
    _fails(capsys, _backdoor(tmp_path / "o", "--set", "defenses.nc=false", "--scans", "cd",
                             "--set", "trigger.amplitude=0.3", "--trigger", "patch"), "stopped")
    spec = captured["spec"]
    on = {n: getattr(spec.defenses, n) not in (None, False) for n in ("nc", "cd", "ibau")}
    assert on == {"nc": False, "cd": True, "ibau": False}
    assert (spec.trigger.kind, spec.trigger.amplitude) == ("patch", 0.3)


def test_executor_flags_reach_the_study(capsys, tmp_path: Path, captured: dict) -> None:
    _fails(capsys, _relearn(tmp_path / "o", "--executor", "local", "--workers", "2"), "stopped")
    ex = captured["executor"]
    assert (ex.executor, ex.workers, ex.ray_address) == ("local", 2, None)
    _fails(capsys, _backdoor(tmp_path / "o", "--executor", "ray", "--ray-address", "auto",
                             "--gpus-per-cell", "0.25"), "stopped")
    ex = captured["executor"]
    assert (ex.executor, ex.ray_address, ex.gpus_per_cell) == ("ray", "auto", 0.25)


@pytest.mark.parametrize(("extra", "needles"), [
    (["--executor", "mpi"], ["--executor", "'mpi'"]),
    (["--workers", "0"], ["--workers", "greater than or equal to 1"]),
    (["--gpus-per-cell", "0"], ["--gpus-per-cell", "must be positive"]),
])
def test_bad_executor_flags(capsys, tmp_path: Path, extra: list[str], needles) -> None:
    _fails(capsys, _relearn(tmp_path / "o", *extra), *needles)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(("command", "item", "needles"), [
    ("backdoor", "trigger.amplitude=2", ["--set trigger.amplitude=2",
                                         "less than or equal to 1"]),
    ("backdoor", "defenses.defense_size=5", ["--set defenses.defense_size=5",
                                             "greater than or equal to 10"]),
    ("relearn", "seeds=[0, -1]", ["--set seeds=[0, -1]", "greater than or equal to 0"]),
    ("relearn", "hparams.gradient_ascent.lr=fast", ["hyper-parameter 'lr'"]),
    ("relearn", "attack_stepz=3", ["--set attack_stepz=3", "unknown key"]),
    ("relearn", "hparams", ["--set 'hparams'", "KEY=VALUE"]),
    ("relearn", "=3", ["--set '=3'", "KEY=VALUE"]),
    ("relearn", "hparams..lr=3", ["--set 'hparams..lr=3'", "KEY=VALUE"]),
    ("relearn", "k=[0", ["--set 'k=[0'", "YAML"]),
    ("relearn", "attack_lr=.nan", ["--set", "not a finite number"]),
], ids=["nested-bound", "nested-defense", "list-item", "hparam-reaches-the-study",
        "unknown-key", "no-equals", "no-key", "empty-part", "bad-yaml", "nan"])
def test_bad_set(capsys, tmp_path: Path, command: str, item: str, needles) -> None:
    args = _relearn(tmp_path / "o") if command == "relearn" else _backdoor(tmp_path / "o")
    _fails(capsys, [*args, "--set", item], *needles)
    assert not (tmp_path / "o" / "results.jsonl").exists()


def test_set_on_a_file_key_names_the_set(capsys, tmp_path: Path) -> None:
    """The file's value is fine; the ``--set`` that replaced it is what the error names."""
    study = tmp_path / "s.yaml"
    study.write_text("dataset: digits\nlmc_points: 5\n")
    _fails(capsys, ["relearn", study, "--set", "lmc_points=1", "--out", tmp_path / "o"],
           "--set lmc_points=1", "greater than or equal to 2")


@pytest.mark.parametrize(("content", "needles"), [
    (b"dataset: digits\nk: [0]\nk: [5]\n", ["s.yaml", "key 'k' appears twice", "line 3"]),
    (b"dataset: digits\n# caf\xe9\n", ["s.yaml", "not UTF-8"]),
    (b"", ["s.yaml", "is empty"]),
    (b"dataset: digits\nattack_lr: [.inf]\n", ["s.yaml", "attack_lr.0", "not a finite"]),
], ids=["duplicate-key", "not-utf8", "empty", "infinite"])
@pytest.mark.parametrize("command", ["relearn", "backdoor"])
def test_study_file_refused_by_the_loader(capsys, tmp_path: Path, command: str,
                                          content: bytes, needles) -> None:
    study = tmp_path / "s.yaml"
    study.write_bytes(content)
    _fails(capsys, [command, study, "--out", tmp_path / "o"], *needles)
    assert not (tmp_path / "o").exists()


def test_help_lists_the_global_debug_option(capsys) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "--debug" in out and "traceback" in out


def test_debug_anywhere_raises_instead_of_one_line(tmp_path: Path) -> None:
    from dormant.errors import DormantError

    with pytest.raises(DormantError, match="KEY=VALUE"):
        main(_relearn(tmp_path / "o", "--set", "oops", "--debug"))


# --- numbers that are NaN or infinite, wherever a number is read ------------------------------


@pytest.mark.parametrize(("command", "extra", "needles"), [
    ("relearn", ["--attack-lr", "inf"], ["--attack-lr", "finite", "inf"]),
    ("relearn", ["--attack-lr", "1e-4,nan"], ["--attack-lr", "finite", "nan"]),
    ("relearn", ["--set", "hparams.gradient_ascent.lr=nan"],
     ["hparams.gradient_ascent.lr", "finite"]),
    ("relearn", ["--set", "attack_lr=[-.inf]"], ["--set", "attack_lr", "finite"]),
    ("backdoor", ["--amplitude", "nan"], ["--amplitude", "finite", "nan"]),
    ("backdoor", ["--set", "trigger.amplitude=-inf"], ["--set", "trigger.amplitude",
                                                        "finite"]),
    ("backdoor", ["--set", "hparams.bad_teacher.lr=.nan"], ["hparams.bad_teacher.lr",
                                                             "finite"]),
    ("unlearn", ["--lr", "nan"], ["--lr", "finite", "nan"]),
    ("unlearn", ["--lr", "-inf"], ["--lr", "finite"]),
], ids=["relearn-attack-lr-inf", "relearn-attack-lr-list", "relearn-set-hparam-text",
        "relearn-set-yaml-inf", "backdoor-amplitude", "backdoor-set-trigger",
        "backdoor-set-hparam", "unlearn-lr-nan", "unlearn-lr-inf"])
def test_non_finite_flag(capsys, tmp_path: Path, digits_ckpt: Path, command: str, extra,
                         needles) -> None:
    out = tmp_path / "o"
    args = {"relearn": _relearn(out), "backdoor": _backdoor(out),
            "unlearn": _unlearn(digits_ckpt, out)}[command]
    _fails(capsys, [*args, *extra], *needles)
    assert not out.exists()  # refused before anything was written


@pytest.mark.parametrize("value", ["nan", ".nan", "-.inf", "Infinity"])
def test_non_finite_hparam_of_forget(capsys, tmp_path: Path, value: str) -> None:
    ids = tmp_path / "ids.txt"
    ids.write_text("1\n2\n")
    store = tmp_path / "store"
    _fails(capsys, ["forget", "--store", store, "--model", "m", "--ids", ids, "--requester",
                    "alice", "--reason", "test", "--method", "finetune", "--hparam",
                    f"lr={value}"], "hyper-parameter 'lr'", "finite")
    assert not store.exists()


@pytest.mark.parametrize("body", ["hparams: {gradient_ascent: {lr: nan}}\n",
                                  "attack_lr: [1e-5, -.inf]\n", "unlearn_lr: .NaN\n"])
def test_non_finite_number_in_a_study_file(capsys, tmp_path: Path, body: str) -> None:
    study = tmp_path / "s.yaml"
    study.write_text("dataset: digits\nmethods: [gradient_ascent]\n" + body)
    _fails(capsys, ["relearn", study, "--out", tmp_path / "o"], "s.yaml", "finite")
    assert not (tmp_path / "o").exists()


def test_every_settings_object_refuses_non_finite_numbers() -> None:
    """The declared constraint, not a check per command: a settings model and a method's
    hyper-parameters both refuse NaN and infinity by name."""
    from dormant.errors import DormantError
    from dormant.experiments.spec import RelearnSpec
    from dormant.settings import validate
    from dormant.unlearn import make_hparams

    for bad in (math.nan, math.inf, -math.inf, "nan"):
        with pytest.raises(DormantError, match="attack_lr.0.*finite"):
            validate(RelearnSpec, {"attack_lr": [bad]}, "options")
        with pytest.raises(DormantError, match="'lr'.*finite"):
            make_hparams("finetune", {"lr": bad})
    assert validate(RelearnSpec, {"attack_lr": [1e-4]}, "options").attack_lr == [1e-4]


# --- sizes checked against the data -----------------------------------------------------------


@pytest.mark.parametrize(("command", "flag", "value", "needles"), [
    ("relearn", "--train-size", "1000000000000",
     ["--train-size", "asked for 10^12 training images", "digits has 1,437"]),
    ("relearn", "--test-size", "361", ["--test-size", "asked for 361 test images",
                                       "digits has 360"]),
    ("train", "--train-size", "1438", ["asked for 1,438 training images", "has 1,437"]),
    ("unlearn", "--train-size", "5000", ["asked for 5,000 training images", "has 1,437"]),
    ("backdoor", "--train-size", "2000", ["asked for 2,000 training images", "has 1,437"]),
])
def test_size_larger_than_the_dataset(capsys, tmp_path: Path, digits_ckpt: Path, command: str,
                                      flag: str, value: str, needles) -> None:
    out = tmp_path / "o"
    args = {"relearn": _relearn(out), "backdoor": _backdoor(out),
            "train": ["train", "--out", str(out), "--steps", "1", "--device", "cpu"],
            "unlearn": _unlearn(digits_ckpt, out)}[command]
    _fails(capsys, [*args, flag, value], *needles)
    assert not out.exists()


def test_size_equal_to_the_dataset_is_the_whole_set() -> None:
    from dormant.data import load_dataset
    from dormant.data.dataset import check_sizes

    ds = load_dataset("digits")
    check_sizes(ds, len(ds.y_train), len(ds.y_test))  # no error: every image


# --- output paths checked before any work -----------------------------------------------------


@pytest.mark.parametrize("command", ["demo", "relearn", "backdoor", "train", "unlearn"])
def test_out_under_a_file(capsys, tmp_path: Path, digits_ckpt: Path, command: str,
                          monkeypatch) -> None:
    import torch

    steps = []  # every training loop zeroes its optimiser's gradients once a step
    real = torch.optim.Optimizer.zero_grad
    monkeypatch.setattr(torch.optim.Optimizer, "zero_grad",
                        lambda self, *a, **k: steps.append(1) or real(self, *a, **k))
    torch.optim.Adam([torch.zeros(1, requires_grad=True)]).zero_grad()  # the counter counts
    assert steps == [1]
    steps.clear()
    blocker = tmp_path / "file"
    blocker.write_text("keep me\n")
    out = blocker / "sub" / "run"
    args = {"demo": ["demo", "--out", str(out), "--device", "cpu"],
            "relearn": _relearn(out), "backdoor": _backdoor(out),
            "train": ["train", "--out", str(out), "--steps", "1", "--device", "cpu"],
            "unlearn": _unlearn(digits_ckpt, out)}[command]
    _fails(capsys, args, str(out), f"{blocker} is a file")
    assert steps == []  # refused up front: not one optimiser step ran
    assert blocker.read_text() == "keep me\n"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
@pytest.mark.parametrize("command", ["relearn", "train"])
def test_out_in_a_read_only_folder(capsys, tmp_path: Path, command: str) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    out = ro / "run"
    try:
        args = {"relearn": _relearn(out),
                "train": ["train", "--out", str(out), "--steps", "1", "--device", "cpu"]}[command]
        _fails(capsys, args, str(out), "cannot create folders in")
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o755)


def test_out_check_reads_the_nearest_existing_folder(tmp_path: Path, monkeypatch) -> None:
    """A folder the process may not write into is refused, whoever runs the tests (root
    writes anywhere, so the permission answer is faked here)."""
    from dormant.cli_common import _check_out
    from dormant.errors import DormantError

    real = os.access
    monkeypatch.setattr(os, "access", lambda p, m: Path(p) != tmp_path and real(p, m))
    with pytest.raises(DormantError, match=r"cannot create folders in .*permission"):
        _check_out(tmp_path / "a" / "b")
    with pytest.raises(DormantError, match="cannot write into"):
        _check_out(tmp_path)
    monkeypatch.setattr(os, "access", real)
    _check_out(tmp_path / "a" / "b")  # writable: no error, and nothing made
    assert not (tmp_path / "a").exists()


# --- progress off a terminal ------------------------------------------------------------------


def test_progress_off_a_terminal_is_plain_periodic_lines() -> None:
    """Off a terminal the bars become log lines: one per tenth of a task's total, one after
    30 s of silence (the beat), and the cells ETA from the whole run's speed."""
    import io

    from rich.console import Console

    from dormant.cli_progress import ProgressBars

    buf = io.StringIO()
    now = [0.0]
    bars = ProgressBars(Console(file=buf, width=200), clock_fn=lambda: now[0])
    assert not bars.live  # a StringIO is no terminal
    with bars:
        bars("cells", 0, 4)
        for step in range(1, 101):
            now[0] += 0.1
            bars("train", step, 100)
        now[0] = 50.0
        bars("cells", 1, 4)  # one cell in 50 s: three more take 150 s
        bars("gradient_ascent", 3, 200)
        now[0] = 81.0
        bars.beat_once()  # 31 s without a line: the beat says where it stands
        now[0] = 85.0
        bars.beat_once()  # 4 s later: nothing
    lines = buf.getvalue().splitlines()
    train = [ln for ln in lines if ln.startswith("train: ")]
    # its start, then each tenth
    assert [ln.split()[1] for ln in train] == [f"{i}/100" for i in (1, *range(10, 101, 10))]
    assert train[-1] == "train: 100/100 (100%) in 10 s"
    assert "cells: 1/4 (25%) in 50 s, eta 2 min 30 s" in lines
    assert "gradient_ascent: 3/200 (2%) in 31 s, still running" in lines
    assert sum("still running" in ln for ln in lines) == 2  # cells and gradient_ascent, once
    assert not bars.beat.is_alive()  # the beat stops with the display


def test_progress_on_a_terminal_keeps_the_live_bars() -> None:
    import io

    from rich.console import Console

    from dormant.cli_progress import ProgressBars

    bars = ProgressBars(Console(file=io.StringIO(), force_terminal=True))
    assert bars.live and bars.beat is None
    with bars:
        bars("cells", 1, 4)
        assert bars.bars.tasks[0].total == 4 and bars.bars.tasks[0].completed == 1


def test_a_device_this_machine_lacks_is_refused_before_any_training(capsys,
                                                                    tmp_path: Path) -> None:
    args = _relearn(tmp_path / "o")
    args[args.index("--device") + 1] = "mps"
    _fails(capsys, args, "--device mps", "cannot use it", "use cpu or auto")
    assert not (tmp_path / "o" / "results.jsonl").exists()


def test_a_study_whose_every_cell_failed_exits_1_after_its_report(capsys,
                                                                  tmp_path: Path) -> None:
    capsys.readouterr()
    # an original that diverges: every cell, the references' too, becomes a failed row
    # and executor flags the serial executor on this CPU would ignore: one warning each
    rc = main([*_relearn(tmp_path / "o"), "--set", "train_recipe.lr=1e30", "--workers", "3",
               "--ray-address", "auto", "--gpus-per-cell", "0.5"])
    cap = capsys.readouterr()
    lines = cap.err.splitlines()
    assert rc == 1, cap.out + cap.err
    # a diverged run is no fault of the machine: no promise that a rerun retries it
    assert any(line.startswith("error: every one of the 3 cells failed (the first: ") and
               line.endswith(f"{tmp_path / 'o' / 'workers' / 'errors.log'}") for line in lines)
    assert not any("retried" in line for line in lines)
    assert (tmp_path / "o" / "report.md").is_file()  # the report is written all the same
    warned = [line for line in cap.out.splitlines() if line.startswith("warning: ")]
    assert len(warned) == 3, warned
    assert "--workers is ignored by the serial executor" in warned[0]
    assert "--ray-address is ignored by the serial executor" in warned[1]
    assert "--gpus-per-cell is ignored" in warned[2]


def test_a_yaml_merge_key_is_read_and_explicit_keys_override_it(tmp_path: Path) -> None:
    from dormant.experiments.spec import RelearnSpec
    from dormant.settings import load_yaml

    study = tmp_path / "s.yaml"
    study.write_text("dataset: digits\nhparams:\n  finetune: &common {lr: 1.0e-4, steps: 5}\n"
                     "  gradient_ascent:\n    <<: *common\n    steps: 7\n")
    spec = RelearnSpec(**load_yaml(study))
    assert spec.hparams["gradient_ascent"] == {"lr": 1e-4, "steps": 7}
    study.write_text("dataset: digits\nk: 0\nk: 5\n")  # a key twice is still refused
    with pytest.raises(Exception, match="key 'k' appears twice"):
        load_yaml(study)


def test_an_alias_bomb_is_refused_in_one_line_at_once(capsys, tmp_path: Path) -> None:
    lines = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    lines += [f"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]"
              for p, c in zip("abcdefgh", "bcdefghi", strict=True)]
    study = tmp_path / "bomb.yaml"
    study.write_text("\n".join(lines) + "\n")  # 9**9 values once expanded
    _fails(capsys, ["relearn", str(study), "--out", str(tmp_path / "o")],
           "more than 100,000 values", "aliases")
    assert not (tmp_path / "o").exists()


# --- sizes the cells would only find out: checked when the grid expands, before training -------


@pytest.mark.parametrize(("extra", "needles"), [
    (["--forget", "random:1437"], ["forget random:1437", "training set has 1,437",
                                   "forget at most 1,436"]),
    (["--forget", "canary:2000"], ["forget canary:2000", "forget at most 1,436"]),
    # five images hold at most one of class 1: the default forget set cannot be drawn
    (["--train-size", "5"], ["forget class:1:atypical:0.3", "class 1 has 1 training",
                             "at least 2"]),
    (["--analysis-size", "361"], ["analysis_size 361", "test set has 360",
                                  "set analysis_size <= 360"]),
], ids=["forget-all", "canaries-past-the-set", "class-too-small", "analysis-size"])
def test_a_size_the_data_cannot_give_is_refused_before_training(capsys, tmp_path: Path, extra,
                                                               needles) -> None:
    out = tmp_path / "o"
    _fails(capsys, _relearn(out, *extra), *needles)
    assert not out.exists()  # not one cell ran: no results, no workers' log


def test_the_backdoor_defense_size_is_checked_against_the_test_set(capsys, tmp_path: Path,
                                                                   monkeypatch) -> None:
    """The README's digits example: its default defense_size (500) is larger than digits'
    360 test images, so it is capped at half of them; a size the study asks for is refused
    up front, naming the key and the limit."""
    import dormant.experiments
    from dormant.errors import DormantError

    out = tmp_path / "o"
    readme = ["--conditions", "attack,random-equal,unpoisoned,none", "--trigger", "noise",
              "--amplitude", "0.1", "--poisons", "3", "--request", "30", "--strategy", "margin"]
    _fails(capsys, _backdoor(out, *readme, "--set", "defenses.defense_size=360"),
           "defenses.defense_size 360", "the test set has 360", "set it below 360")
    assert not out.exists()

    def stop(spec, out, **_):  # the grid expanded and every check passed: stop before training
        raise DormantError("stopped where the cells would start")

    monkeypatch.setattr(dormant.experiments, "run_backdoor", stop)
    _fails(capsys, _backdoor(out, *readme), "stopped where the cells would start")
    from dormant.experiments.backdoor_scan import defense_size
    from dormant.experiments.backdoor_spec import BackdoorSpec

    assert defense_size(BackdoorSpec().defenses, 360) == 180
    assert defense_size(BackdoorSpec().defenses, 2000) == 500  # a large test set: the default
    assert defense_size(BackdoorSpec(defenses={"defense_size": 300}).defenses, 360) == 300
    # a spec read back from its dump (every key set) means the same images: its cell key does
    again = BackdoorSpec.model_validate(BackdoorSpec().model_dump())
    assert defense_size(again.defenses, 360) == 180


# --- faults of the machine: one line naming the path and what to do, no temporary left ---------


def test_an_unusable_cache_folder_is_refused_before_a_study(capsys, tmp_path: Path,
                                                            monkeypatch) -> None:
    """A path under a regular file: no folder can be made there, whoever runs the test
    (root writes through chmod)."""
    blocker = tmp_path / "file"
    blocker.write_text("keep me\n")
    monkeypatch.setenv("DORMANT_CACHE", str(blocker / "cache"))
    out = tmp_path / "o"
    _fails(capsys, _relearn(out), f"DORMANT_CACHE {blocker / 'cache'}", f"{blocker} is a file")
    _fails(capsys, _backdoor(out), f"DORMANT_CACHE {blocker / 'cache'}")
    assert not out.exists() and blocker.read_text() == "keep me\n"


def test_a_full_disk_is_one_line_naming_the_file_and_leaves_no_temporary(
        capsys, tmp_path: Path, monkeypatch) -> None:
    """Every write fails with ENOSPC half-way (the disk-full failpoint): the dataset cache
    costs only speed (one warning line), the checkpoint ends the run with exit 1 and one
    line naming it; no temporary file is left anywhere."""
    cache, out = tmp_path / "cache", tmp_path / "o"
    monkeypatch.setenv("DORMANT_CACHE", str(cache))
    monkeypatch.setenv("DORMANT_FAILPOINT", "disk-full")
    capsys.readouterr()
    rc = main(["train", "--steps", "1", "--device", "cpu", "--out", str(out)])
    cap = capsys.readouterr()
    assert rc == 1, cap.out + cap.err
    assert "Traceback" not in cap.err
    warn, err = cap.err.splitlines()
    assert warn.startswith(f"warning: could not write the dataset cache {cache / 'data'}/")
    assert "No space left on device" in warn and "decoded again on every run" in warn
    assert err.startswith("error: No space left on device"), err
    assert err.endswith(f": {out / 'model.safetensors'}; free space on that disk, or point "
                        "DORMANT_CACHE / --out to another one, then rerun (nothing recorded "
                        "was lost)"), err
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == []  # not a byte


# --- messages that point the right way --------------------------------------------------------


def test_a_set_below_a_flags_key_names_the_set_not_the_flag(capsys, tmp_path: Path) -> None:
    line = _fails(capsys, _relearn(tmp_path / "o", "--train-size", "100", "--set",
                                   "train_size.x=1"), "--set train_size.x=1", "valid integer")
    assert "--train-size" not in line  # the flag's value was fine, and the --set replaced it


def test_a_folder_given_as_a_checkpoint_is_called_a_folder(capsys, tmp_path: Path,
                                                           digits_ckpt: Path) -> None:
    folder = digits_ckpt.parent
    _fails(capsys, _unlearn(folder, tmp_path / "o"), f"checkpoint {folder} is a folder",
           f"e.g. {digits_ckpt}")
    assert not (tmp_path / "o").exists()


def test_another_stores_ledger_is_named_as_such(capsys, tmp_path: Path,
                                                digits_ckpt: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["store", "add", str(a), "alpha", str(digits_ckpt)]) == 0
    assert main(["store", "add", str(b), "beta", str(digits_ckpt)]) == 0
    for args in (["store", "list", str(b)], ["approve", "--store", str(b), "--request", "x",
                                             "--by", "me", "--comment", "ok"]):
        _fails(capsys, [*args, "--ledger", str(a / "ledger.sqlite")],
               f"--ledger {a / 'ledger.sqlite'} is not the ledger of the store {b}",
               "models/beta/v1.safetensors")


def test_user_text_is_printed_as_it_is_never_as_markup(capsys, tmp_path: Path) -> None:
    out, store = tmp_path / "[reverse]run", tmp_path / "[red]store"
    capsys.readouterr()
    assert main(["train", "--steps", "1", "--device", "cpu", "--out", str(out),
                 "--store", str(store), "--name", "m"]) == 0
    printed = capsys.readouterr().out.replace("\n", "")
    assert "[reverse]run/model.safetensors" in printed
    assert "[red]store as m v1" in printed
    assert main(["ledger", "show", str(store)]) == 0
    assert "[red]store" in capsys.readouterr().out


def test_unlearning_dearer_than_retraining_reads_as_a_cost(capsys, tmp_path: Path) -> None:
    from dormant.requests import Ledger

    path = tmp_path / "ledger.sqlite"
    book = Ledger(path, create=True)
    book.append("request-finished", {
        "from_version": 1, "to_version": 2, "ids": [1, 2], "method": "finetune",
        "verdict": "pass", "promoted": True,
        "measurements": {"before": {"test_acc": 90.0}, "after": {"test_acc": 89.0}},
        "cost": {"training_seconds": 50.5, "full_retrain_seconds": 40.4}},
        request_id="r1", model="m")
    capsys.readouterr()
    assert main(["ledger", "show", str(path)]) == 0
    printed = " ".join(capsys.readouterr().out.split())
    assert ("against 40.4 s for a full retrain per request (a batch shares one): 10.1 s more "
            "than retraining (1.2x the retrain's cost)") in printed
    assert "saved" not in printed and "-10.1" not in printed
