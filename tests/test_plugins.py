"""Components from outside the package (``dormant.plugins``): a tiny plugin package installed
from a temporary folder registers a method, a model, a dataset and a request check; the real
CLI lists the method, runs a study on all three and judges a request with the check. The same
file works uninstalled through ``--plugin`` (and reaches worker processes). A broken plugin is
one line, and the rest still works. Precedence and clashes are checked in-process."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import write_ids
from plugin_source import COMPONENTS, write_package

from dormant import plugins
from dormant.data import sources
from dormant.defenses import registry as defenses
from dormant.errors import DormantError
from dormant.models import registry as models
from dormant.requests import checks
from dormant.unlearn import base as methods

POLICY = """\
budget: {relearn_steps: 10, relearn_lr: 1.0e-3, eval_every: 5, leaked_k: 0,
         defender_images: 40, nc: {epochs: 1, batch_size: 20}, uap: {steps: 2},
         mia_size: 60}
weight_growth: {warn: 0.0}
"""


def _cli(*args, env: dict, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dormant", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **env})


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    """``tiny-plugin`` pip-installed into a folder of its own (put on PYTHONPATH: the venv
    is left as it was), with an extra entry point whose module fails to import."""
    root = tmp_path_factory.mktemp("plugin")
    write_package(root / "src", broken=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--no-build-isolation", "--target", str(root / "site"), str(root / "src")],
                   check=True, capture_output=True)
    return {"root": root, "env": {"PYTHONPATH": str(root / "site"),
                                  "DORMANT_CACHE": str(root / "cache")}}


def _study(out: Path, *extra: str) -> list:
    return ["relearn", "--dataset", "halfdigits", "--model", "wide-mlp", "--methods",
            "retain_boost", "--seeds", "0", "--k", "0", "--train-steps", "150",
            "--unlearn-steps", "20", "--attack-steps", "10", "--calibrate", "none",
            "--no-analysis", "--device", "cpu", "--out", out, *extra]


def _rows(out: Path) -> dict:
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    return {r["method"]: r for r in rows}


def _check_study(out: Path) -> None:
    rows = _rows(out)
    assert set(rows) == {"original", "retrain", "retain_boost"}
    assert all(r["status"] == "ok" for r in rows.values()), rows
    boost = rows["retain_boost"]
    # the plugin's dataset (five classes, 8x8) and model (one 256-unit layer) ran it
    assert (boost["dataset"], boost["model"]) == ("halfdigits", "wide-mlp")
    assert boost["hparams"]["steps"] == 20 and rows["original"]["train_fit_acc"] > 80.0
    assert 0.0 <= boost["forget_acc"] <= 100.0 and boost["retain_acc"] > 50.0


def _check_request(root: Path, env: dict, *plugin: str) -> dict:
    """Train into a store, forget ten ids, and return the request's ``weight_growth`` check."""
    store = root / "store"
    (root / "policy.yaml").write_text(POLICY)
    r = _cli(*plugin, "train", "--dataset", "halfdigits", "--model", "wide-mlp", "--steps", "60",
             "--out", root / "train", "--store", store, "--name", "m", "--device", "cpu",
             env=env, cwd=root)
    assert r.returncode == 0, r.stderr
    r = _cli(*plugin, "forget", "--store", store, "--model", "m", "--ids",
             write_ids(root / "ids.txt", range(10)), "--requester", "a", "--reason", "test",
             "--policy", root / "policy.yaml", "--dataset", "halfdigits", "--device", "cpu",
             env=env, cwd=root)
    assert r.returncode == 0, r.stderr
    (record,) = [json.loads(p.read_text()) for p in (store / "requests").glob("*/record.json")]
    (check,) = [c for c in record["checks"] if c["name"] == "weight_growth"]
    # the policy's warn level of 0 flags any growth, so the check decides the verdict too
    assert check["status"] == "warn" and record["verdict"] == "warn"
    return check


@pytest.mark.slow
def test_an_installed_plugin_registers_a_method_model_dataset_and_check(installed):
    root, env = installed["root"], installed["env"]
    r = _cli("methods", env=env, cwd=root)
    assert r.returncode == 0, r.stderr
    assert "retain_boost" in r.stdout and "dormant.methods:tiny" in " ".join(r.stdout.split())
    # the broken entry point: one line naming it and its error, and the command still worked
    assert r.stderr.strip().splitlines() == [
        "warning: plugin entry point dormant.defenses:broken = tiny_plugin.broken (tiny-plugin "
        "0.1) failed to load (ModuleNotFoundError: No module named 'not_a_module_anywhere'); "
        "everything else still works"]
    r = _cli(*_study(root / "study"), env=env, cwd=root)
    assert r.returncode == 0, r.stderr
    _check_study(root / "study")
    check = _check_request(root, env)
    assert check["group"] == "sanity" and check["detail"].startswith("weight norm ")
    # the plugin's own measure: the norm before and after, and a warn level of 0 flags growth
    before, after = (float(v) for v in check["detail"].split()[2::2])
    assert check["value"] == pytest.approx((after - before) / before, abs=1e-5)


@pytest.mark.slow
def test_the_same_file_works_uninstalled_with_plugin_even_on_workers(tmp_path):
    src = tmp_path / "my_components.py"
    src.write_text(COMPONENTS)
    env = {"DORMANT_CACHE": str(tmp_path / "cache")}
    r = _cli("--plugin", src, "methods", env=env, cwd=tmp_path)
    assert r.returncode == 0 and "--plugin" in r.stdout and "retain_boost" in r.stdout
    assert r.stderr == ""
    # a dotted module from the working folder too, and the local executor's worker process
    # loads it before its first cell
    r = _cli("--plugin", "my_components", *_study(tmp_path / "study", "--executor", "local",
                                                 "--workers", "1"), env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    _check_study(tmp_path / "study")
    # the request path is the entry-point test's; here: the check and the rest registered
    r = _cli("--plugin", src, "plugins", env=env, cwd=tmp_path)
    assert "check weight_growth" in r.stdout and "dataset halfdigits" in r.stdout


def test_a_study_file_names_its_plugins(tmp_path, monkeypatch, restore):
    from dormant.cli_common import load_spec
    from dormant.experiments.spec import RelearnSpec

    (tmp_path / "study_parts.py").write_text(COMPONENTS)
    monkeypatch.chdir(tmp_path)
    study = tmp_path / "s.yaml"
    study.write_text("plugins: [study_parts]\ndataset: halfdigits\nmethods: [retain_boost]\n")
    spec = load_spec(RelearnSpec, study)
    assert spec.plugins == ("study_parts",) and spec.methods == ["retain_boost"]
    assert "plugins" not in spec.model_dump()  # no cache key changes with where code lives
    assert plugins.source("methods", "retain_boost").level == "--plugin"


# --- precedence and clashes, in-process ---------------------------------------------------------

METHOD = '''
from dormant.unlearn.base import StepHparams, hyperparameters, register_method

@hyperparameters
class H(StepHparams):
    """{doc}"""

@register_method("{name}", H)
def fn(model, data, hp, ctx):
    return model
'''


@pytest.fixture
def restore():
    """Registries and plugin state as they were before the test."""
    tables = [methods._METHODS, sources._REGISTRY, models._BUILDERS, models._PREFIXED,
              checks._CHECKS, defenses._DEFENSES, plugins._plugins,
              *plugins._sources.values(), *plugins._clashes.values()]
    saved = [dict(t) for t in tables]
    requested, env = list(plugins._requested), os.environ.get(plugins.ENV)
    modules, path, loaded = set(sys.modules), list(sys.path), plugins._entry_points_loaded
    yield
    for table, before in zip(tables, saved, strict=True):
        table.clear()
        table.update(before)
    for name in set(sys.modules) - modules:
        del sys.modules[name]
    sys.path[:] = path
    plugins._entry_points_loaded = loaded
    plugins._requested[:] = requested
    if env is None:
        os.environ.pop(plugins.ENV, None)
    else:
        os.environ[plugins.ENV] = env


def _file(tmp_path: Path, stem: str, name: str, doc: str) -> str:
    path = tmp_path / f"{stem}.py"
    path.write_text(METHOD.format(name=name, doc=doc))
    return str(path)


def test_a_plugin_replaces_a_built_in_and_run_time_beats_a_plugin(tmp_path, restore):
    with pytest.warns(plugins.PluginWarning, match="replaces the built-in method 'finetune'"):
        plugins.use(_file(tmp_path, "a", "finetune", "Plugin finetune."))
    assert methods.get_method("finetune").summary == "Plugin finetune."
    assert plugins.source("methods", "finetune").level == "--plugin"

    # a run-time registration wins over the --plugin one, and a later one replaces it
    for doc in ("Run time one.", "Run time two."):
        exec(METHOD.format(name="finetune", doc=doc), {"__name__": "notebook"})
        assert methods.get_method("finetune").summary == doc
    assert str(plugins.source("methods", "finetune")) == "run time notebook"

    # a lower level loaded later keeps out: the run-time method stays
    plugins.use(_file(tmp_path, "late", "finetune", "Late plugin."))
    assert methods.get_method("finetune").summary == "Run time two."


def test_two_plugins_under_one_name_clash_in_one_line_naming_both(tmp_path, restore):
    first, second = _file(tmp_path, "one", "twin", "One."), _file(tmp_path, "two", "twin", "Two.")
    plugins.use(first)
    line = (f"method 'twin' from --plugin {second} clashes with the one from --plugin "
            f"{first}; rename one of them")
    with pytest.warns(plugins.PluginWarning) as caught:
        plugins.use(second)
    assert [str(w.message) for w in caught] == [line]
    # neither is used: whichever loaded first would depend on the environment's order
    with pytest.raises(DormantError) as e:
        methods.get_method("twin")
    assert str(e.value) == line


def _dist(site: Path, name: str, module: str, method: str, doc: str) -> None:
    """An installed distribution as importlib.metadata finds it: a module and a dist-info
    folder with one ``dormant.methods`` entry point."""
    info = site / f"{name}-0.1.dist-info"
    info.mkdir(parents=True)
    (site / f"{module}.py").write_text(METHOD.format(name=method, doc=doc))
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[dormant.methods]\n{method} = {module}\n")


def _reload_entry_points(site: Path) -> None:
    if str(site) not in sys.path:
        sys.path.insert(0, str(site))
    importlib.invalidate_caches()
    plugins._entry_points_loaded = False
    plugins.load()


def test_entry_points_rank_below_plugin_and_two_of_them_clash(tmp_path, restore):
    site = tmp_path / "site"
    _dist(site, "first-dist", "first_mod", "ep_method", "From an entry point.")
    _reload_entry_points(site)
    assert methods.get_method("ep_method").summary == "From an entry point."
    assert str(plugins.source("methods", "ep_method")) == (
        "entry point dormant.methods:ep_method = first_mod (first-dist 0.1)")
    # --plugin outranks it, whichever loads first
    plugins.use(_file(tmp_path, "over", "ep_method", "From --plugin."))
    assert methods.get_method("ep_method").summary == "From --plugin."
    # a second distribution under the same name: an entry-point clash, refused on use
    _dist(site, "second-dist", "second_mod", "ep_twin", "Second.")
    _dist(site, "third-dist", "third_mod", "ep_twin", "Third.")
    with pytest.warns(plugins.PluginWarning, match="method 'ep_twin' from entry point .* "
                                                   "clashes with the one from entry point"):
        _reload_entry_points(site)
    with pytest.raises(DormantError, match="rename one of them"):
        methods.get_method("ep_twin")


def test_bad_plugin_targets_are_one_line_each(tmp_path, restore, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DormantError, match=r"--plugin nothere\.py: no such file"):
        plugins.use("nothere.py")
    with pytest.raises(DormantError, match="--plugin no_such_mod: no module 'no_such_mod' "
                                           "importable from"):
        plugins.use("no_such_mod")
    # two files of one name: the second is refused, not silently skipped
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    plugins.use(_file(tmp_path / "a", "same", "from_a", "A."))
    with pytest.warns(plugins.PluginWarning, match="another plugin file named same.py"):
        plugins.use(_file(tmp_path / "b", "same", "from_b", "B."))
    assert "from_a" in methods.available_methods()
    assert "from_b" not in methods.available_methods()


def test_a_run_time_method_is_refused_on_worker_executors(restore):
    from types import SimpleNamespace

    from dormant.executors import _refuse_stranded
    from dormant.experiments.spec import RelearnSpec

    exec(METHOD.format(name="notebook_method", doc="Notebook."), {"__name__": "notebook"})
    cell = SimpleNamespace(spec=RelearnSpec(methods=["finetune", "notebook_method"]))
    with pytest.raises(DormantError, match="method 'notebook_method' \\(run time notebook\\) "
                                           "was registered at run time.*--executor serial"):
        _refuse_stranded([cell])
    _refuse_stranded([SimpleNamespace(spec=RelearnSpec(methods=["finetune"]))])


def test_a_broken_plugin_leaves_the_rest_working(tmp_path, restore):
    bad = tmp_path / "bad.py"
    bad.write_text("raise RuntimeError('boom')\n")
    with pytest.warns(plugins.PluginWarning, match=r"bad\.py failed to load \(RuntimeError: "
                                                   r"boom\); everything else still works"):
        plugins.use(str(bad))
    good = _file(tmp_path, "good", "good_method", "Good.")
    plugins.use(good)
    assert "good_method" in methods.available_methods()
    assert [p.error for p in plugins.plugins() if str(bad) in p.source.name] == [
        "RuntimeError: boom"]
    with pytest.raises(DormantError, match="unknown method 'nope'"):
        methods.get_method("nope")
