"""One resolver for every method's hyper-parameters: the same preset gives the same values
through ``relearn``, ``backdoor``, ``forget``, ``unlearn`` and the Python API; a method
registered from outside the package gets presets the same way; no method value lives in a
command's code."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from dormant.cli import main
from dormant.engine import Recipe
from dormant.errors import DormantError
from dormant.experiments import single
from dormant.experiments.backdoor_spec import BackdoorSpec
from dormant.experiments.profiles import Profile, profile_for
from dormant.experiments.relearn import method_hparams as relearn_hparams
from dormant.experiments.spec import RelearnSpec
from dormant.requests import forget
from dormant.unlearn import (
    Preset,
    StepHparams,
    UnlearnContext,
    UnlearnData,
    available_presets,
    base,
    get_method,
    hyperparameters,
    make_hparams,
    register_method,
    resolve_hparams,
    unlearn,
)
from dormant.unlearn.base import Positive

SRC = Path(__file__).resolve().parents[1] / "src" / "dormant"
N_DIGITS = 1797  # sklearn's digits, the whole set


def _prep(dataset: str = "digits", n: int = N_DIGITS, shape=(1, 8, 8)) -> SimpleNamespace:
    """What relearn's ``method_hparams`` reads of a prepared study."""
    return SimpleNamespace(profile=profile_for(dataset, n, shape),
                           dataset=SimpleNamespace(y_train=torch.zeros(n)), oracle_monitor_acc=40.0)


def _spy(monkeypatch) -> list:
    """Replace gradient ascent's function by one that records the hyper-parameters it got."""
    seen: list = []
    info = get_method("gradient_ascent")
    monkeypatch.setattr(base, "_METHODS", dict(base._METHODS))
    base._METHODS["gradient_ascent"] = dataclasses.replace(
        info, fn=lambda model, _data, hp, _ctx: seen.append(hp) or model)
    return seen


def _api(monkeypatch, preset: str | None) -> dict:
    seen = _spy(monkeypatch)
    model = torch.nn.Linear(4, 2)
    n = N_DIGITS
    data = UnlearnData(torch.zeros(n, 4), torch.zeros(n, dtype=torch.long), torch.arange(3),
                       torch.arange(3, n), torch.arange(2), 2)
    unlearn("gradient_ascent", model, data, UnlearnContext(Recipe(steps=1), lambda s=None: model),
            preset=preset)
    return dataclasses.asdict(seen[0])


def _single(monkeypatch, tmp_path: Path, preset: str | None) -> dict:
    """``dormant unlearn``'s path, up to the call of the method."""
    monkeypatch.setenv("DORMANT_CACHE", str(tmp_path / "cache"))
    spec = RelearnSpec(dataset="digits", train_steps=3, device="cpu")
    ckpt, _ = single.train_model(spec, tmp_path / "train")
    spec = spec.model_copy(update={"forget": ["random:20"]})
    seen: list = []

    class Stop(Exception):
        pass

    def record(_name, _model, _data, _ctx, **hp):
        seen.append(hp)
        raise Stop

    monkeypatch.setattr(single, "unlearn", record)
    with pytest.raises(Stop):
        single.unlearn_checkpoint(spec, ckpt, "gradient_ascent", tmp_path / "u", preset=preset)
    return seen[0]


def _pick(hp: dict) -> tuple:
    return hp["steps"], hp["lr"]


@pytest.mark.parametrize("preset, want", [("backdoor", (10, 1e-4)), ("digits", (1500, 1e-4))])
def test_one_preset_same_values_through_every_command(monkeypatch, tmp_path, preset, want):
    routes = {
        "relearn": relearn_hparams(RelearnSpec(dataset="digits", preset=preset), _prep(),
                                   "gradient_ascent", {}),
        "backdoor": BackdoorSpec(preset=preset).method_hparams("gradient_ascent"),
        "forget": forget.method_hparams("gradient_ascent", {}, preset),
        "resolver": resolve_hparams("gradient_ascent", preset),
    }
    with monkeypatch.context() as m:
        routes["api"] = _api(m, preset)
    routes["unlearn"] = _single(monkeypatch, tmp_path, preset)
    for route, hp in routes.items():
        assert _pick(hp) == want, route
    # the full objects agree too, not only the budget
    full = dataclasses.asdict(make_hparams("gradient_ascent", routes["resolver"]))
    assert routes["forget"] == routes["api"] == routes["unlearn"] == full


def test_each_command_default_is_its_documented_preset(monkeypatch, tmp_path):
    # relearn: the dataset profile's preset; an epoch budget counts the training set
    assert relearn_hparams(RelearnSpec(dataset="digits"), _prep(), "gradient_ascent", {}) == \
        {"steps": 1500, "lr": 1e-4}
    mnist = _prep("mnist", 10_000, (1, 28, 28))
    assert mnist.profile.preset == "grey28"
    assert relearn_hparams(RelearnSpec(dataset="mnist"), mnist, "finetune", {}) == \
        {"steps": 1563, "lr": 1e-4}  # ceil(20 epochs x 10,000 / 128)
    cifar = _prep("cifar10", 50_000, (3, 32, 32))
    assert cifar.profile.preset == "cifar"
    assert relearn_hparams(RelearnSpec(dataset="cifar10"), cifar, "tar", {}) == \
        {"steps": 39_063, "lr": 1e-5}  # ceil(100 epochs x 50,000 / 128)
    # backdoor and forget: backdoor
    assert _pick(BackdoorSpec().method_hparams("gradient_ascent")) == (10, 1e-4)
    assert _pick(forget.method_hparams("gradient_ascent", {})) == (10, 1e-4)
    # unlearn and the API: paper, the class defaults
    with monkeypatch.context() as m:
        assert _pick(_api(m, None)) == (39_100, 1e-5)
    assert _pick(_single(monkeypatch, tmp_path, None)) == (39_100, 1e-5)


def test_todays_configs_resolve_as_before():
    # the backdoor study's budgets: Bad Teacher's reference pass, Fisher on the whole retain
    # set, the step methods at the victim's utility bar (unlearn/base.py BACKDOOR_DOC)
    old = {"retrain": {}, "bad_teacher": {"steps": 13, "lr": 1e-4, "batch_size": 256},
           "fisher_forgetting": {"max_samples": None},
           "boundary_shrink": {"steps": 10, "lr": 1e-4},
           "boundary_expand": {"steps": 20, "lr": 1e-4},
           "gradient_ascent": {"steps": 10, "lr": 1e-4}, "neggrad_plus": {"steps": 50, "lr": 1e-4}}
    spec = BackdoorSpec(hparams={"gradient_ascent": {"steps": 30}})
    for m in spec.methods:
        assert spec.method_hparams(m) == {**old[m], **spec.hparams.get(m, {})}, m
    # configs/mnist-quick.yaml: unlearn_steps and unlearn_lr over the profile's preset, per
    # method hparams on top, nothing for a method without steps; the stop target when asked
    quick = RelearnSpec(dataset="mnist", unlearn_steps=400, unlearn_lr=1e-4,
                        stop="oracle-leakable")
    mnist = _prep("mnist", 6_000, (1, 28, 28))
    assert relearn_hparams(quick, mnist, "ssd", {"batch_size": 16}) == \
        {"steps": 400, "lr": 1e-4, "batch_size": 16}
    assert relearn_hparams(quick, mnist, "gradient_ascent", {}) == \
        {"steps": 400, "lr": 1e-4, "stop_acc": 40.0}
    assert relearn_hparams(quick, mnist, "fisher_forgetting", {}) == {}
    assert relearn_hparams(quick, mnist, "retrain", {}) == {}


def test_unknown_preset_is_one_line_listing_the_known_ones():
    with pytest.raises(DormantError) as e:
        resolve_hparams("finetune", "fast")
    assert str(e.value) == ("unknown preset 'fast'; choose one of: "
                            + ", ".join(available_presets()))
    assert "\n" not in str(e.value)
    for bad in (lambda: BackdoorSpec(preset="fast"), lambda: RelearnSpec(preset="fast")):
        with pytest.raises(Exception, match="unknown preset 'fast'; choose one of: backdoor"):
            bad()
    with pytest.raises(DormantError, match="in epochs of the training set"):
        resolve_hparams("finetune", "grey28")  # no n_train


def test_overrides_win_and_are_checked():
    assert resolve_hparams("gradient_ascent", "backdoor", {"lr": 3e-4}) == \
        {"steps": 10, "lr": 3e-4}
    # steps given: the preset's epochs are not used, so no n_train is needed
    assert resolve_hparams("finetune", "grey28", {"steps": 5}) == {"steps": 5, "lr": 1e-4}
    # an epoch is n_train / batch_size steps at the batch size the run uses
    assert resolve_hparams("finetune", "grey28", {"batch_size": 64}, n_train=640) == \
        {"steps": 200, "lr": 1e-4, "batch_size": 64}
    with pytest.raises(DormantError, match="^method 'finetune': hyper-parameter 'lr': "
                       "must be positive, got -1"):
        resolve_hparams("finetune", "digits", {"lr": -1})
    with pytest.raises(DormantError, match="method 'finetune' has no hyper-parameter 'alpha'"):
        resolve_hparams("finetune", "digits", {"alpha": 1})


@hyperparameters
class ToyHparams(StepHparams):
    """Toy: a method registered from outside the package (this test)."""

    knob: Positive = 2.0


def test_a_method_from_outside_the_package_gets_presets(monkeypatch, capsys):
    monkeypatch.setattr(base, "_METHODS", dict(base._METHODS))
    register_method("toy_external", ToyHparams, presets={
        "backdoor": Preset({"steps": 7, "knob": 3.0}, doc="toy backdoor budget"),
        "toy": Preset({"knob": 5.0}, epochs=2, doc="toy preset, two epochs"),
        "digits": Preset({"knob": 4.0}),  # refines the shared digits budget key by key
    })(lambda model, _data, _hp, _ctx: model)
    assert "toy" in available_presets()
    assert resolve_hparams("toy_external", "backdoor") == {"steps": 7, "knob": 3.0}
    assert resolve_hparams("toy_external", "digits") == {"steps": 1500, "lr": 1e-4, "knob": 4.0}
    assert resolve_hparams("toy_external", "toy", n_train=640) == {"steps": 10, "knob": 5.0}
    assert resolve_hparams("toy_external") == {}
    # a method without the preset runs its class defaults under it
    assert resolve_hparams("finetune", "toy", n_train=640) == {}
    with pytest.raises(DormantError, match="preset 'bad' sets 'nope'"):
        register_method("toy_bad", ToyHparams, presets={"bad": Preset({"nope": 1})})

    from dormant.cli_common import console
    monkeypatch.setattr(console, "width", 400)
    assert main(["methods", "--preset", "toy", "--n-train", "640"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if "toy_external" in line)
    assert "steps=10," in row and "knob=5.0" in row and "toy preset, two epochs" in row
    finetune = next(line for line in out.splitlines() if "│ finetune " in line)
    assert "steps=39100" in finetune and "no toy preset: the class defaults" in finetune
    assert main(["methods", "--preset", "toy"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if "toy_external" in line)
    assert "steps=2 epochs" in row
    assert main(["methods", "--preset", "nope"]) == 2
    assert "unknown preset 'nope'; choose one of:" in capsys.readouterr().err


def test_no_method_value_lives_outside_its_own_file_and_presets():
    assert not hasattr(__import__("dormant.experiments.backdoor_spec",
                                  fromlist=["x"]), "DEFAULT_HPARAMS")
    fields = {f.name for f in dataclasses.fields(Profile)}
    assert "preset" in fields and not fields & {"unlearn_steps", "unlearn_lr"}
    budget = re.compile(r"""["'](steps|lr|max_samples)["']\s*:\s*[\d.]|unlearn_(steps|lr)\s*=""")
    for rel in ("experiments/backdoor_spec.py", "experiments/profiles.py", "requests/forget.py",
                "cli_requests.py", "experiments/single.py"):
        text = (SRC / rel).read_text()
        assert "DEFAULT_HPARAMS" not in text, rel
        assert not budget.search(text), (rel, budget.search(text))
    # the profiles name no method at all
    profiles = (SRC / "experiments" / "profiles.py").read_text()
    assert not [m for m in base.available_methods() if re.search(rf"\b{m}\b", profiles)]
