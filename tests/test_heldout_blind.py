"""No method, stopping rule or study default reads the held-out forget split: the split that
every reported forget accuracy is measured on."""

from __future__ import annotations

import dataclasses
import importlib

import pytest
import torch

from dormant.engine import evaluate
from dormant.experiments.relearn import method_hparams
from dormant.experiments.spec import RelearnSpec
from dormant.unlearn import StoppableHparams, UnlearnData, available_methods, get_method, unlearn

# the module whose predict every evaluation goes through
evaluate_module = importlib.import_module("dormant.engine.evaluation")
CHEAP = {"tar": {"adversaries": 1, "inner_steps": 2}, "fisher_forgetting": {"max_samples": 200},
         "ssd": {"max_samples": 300}, "sisa": {"shards": 2, "slices": 2}}


def test_unlearn_data_does_not_name_the_heldout_split():
    fields = {f.name for f in dataclasses.fields(UnlearnData)}
    assert fields == {"x", "y", "forget", "retain", "monitor", "num_classes"}


def _spy_evaluations(monkeypatch) -> list[torch.Tensor]:
    """Every evaluation from now on appends the ids it reads to the returned list."""
    seen: list[torch.Tensor] = []
    real = evaluate_module.predict

    def spy(model, x, ids=None, batch_size=1024):
        seen.append(torch.arange(len(x)) if ids is None else ids.detach().cpu())
        return real(model, x, ids, batch_size)

    monkeypatch.setattr(evaluate_module, "predict", spy)
    return seen


@pytest.mark.parametrize("name", [m for m in available_methods() if m != "retrain"])
def test_every_evaluation_a_method_makes_is_on_monitor_ids(name, digits_setup, monkeypatch):
    """Stop rules run every step (stop_acc = 0 never triggers) while a spy records the ids
    of every evaluation: all lie in the leakable monitor split, none in the held-out one."""
    prep = digits_setup
    seen = _spy_evaluations(monkeypatch)
    info = get_method(name)
    hp = dict(CHEAP.get(name, {}))
    if "steps" in info.defaults():
        hp.update(steps=4, lr=1e-4)
    stoppable = issubclass(info.hparams, StoppableHparams)
    if stoppable:
        hp["stop_acc"] = -1.0
    unlearn(name, prep.original, prep.unlearn_data(), prep.context(None), **hp)
    heldout = set(prep.split.heldout.tolist())
    monitor = set(prep.split.leakable.tolist())
    for ids in seen:
        assert not heldout & set(ids.tolist()), f"{name} evaluated held-out forget ids"
        assert set(ids.tolist()) <= monitor
    if stoppable:
        assert len(seen) >= 4  # the stop rule really ran, so the check above could fail


def test_calibration_reads_only_the_leakable_ids(digits_setup, tmp_path, monkeypatch):
    """``calibrate: oracle`` scores every candidate strength of every kind of method (an
    lr, a noise scale, a distance-calibrated remedy, a chain) while a spy records the ids of
    every evaluation: none is held out, and the choice is the candidate nearest the oracle."""
    from dormant.experiments.calibrate import calibrate
    from dormant.experiments.pipeline import resolve
    from dormant.experiments.relearn import unlearned_model
    from dormant.store import ModelCache

    prep = digits_setup
    spec = RelearnSpec(dataset="digits", methods=[
        "gradient_ascent", "weight_distortion",
        {"name": "ga+wdr", "method": "gradient_ascent", "then": "weight_dist_reg"}],
        unlearn_steps=30)
    cache = ModelCache(tmp_path)
    seen = _spy_evaluations(monkeypatch)
    chosen = {}
    for pipe in resolve(spec)[2:]:
        hps = [method_hparams(spec, prep, s.method, s.hparams) for s in pipe.stages]
        chosen[pipe.name] = calibrate(prep, pipe, hps, [{} for _ in pipe.stages],
                                      lambda p, h: unlearned_model(prep, p, h, cache, None)[0])
    heldout = set(prep.split.heldout.tolist())
    # 4 candidates each: ga, weight_distortion, the chain's ga (its wdr stage is scored by
    # distance, which evaluates nothing)
    assert len(seen) >= 4 + 4 + 4
    for ids in seen:
        assert not heldout & set(ids.tolist()), "calibration evaluated held-out forget ids"
    monkeypatch.undo()
    (cal,) = chosen["gradient_ascent"]
    leak = [abs(s - cal.goal) for s in cal.scores]
    assert cal.goal == pytest.approx(prep.oracle_monitor_acc, abs=1e-4)
    assert cal.chosen == cal.values[leak.index(min(leak))]
    first, second = chosen["ga+wdr"]
    assert first.chosen == cal.chosen  # the chain's first stage is the method's own choice
    assert second.target == "distance" and second.param == "alpha"


def test_the_study_stop_target_is_the_oracles_leakable_accuracy(digits_setup):
    prep = digits_setup
    hp = method_hparams(RelearnSpec(dataset="digits", stop="oracle-leakable"), prep,
                        "gradient_ascent", {})
    leak = evaluate(prep.oracle, prep.x, prep.y, prep.split.leakable).acc
    held = evaluate(prep.oracle, prep.x, prep.y, prep.split.heldout).acc
    assert hp["stop_acc"] == leak
    assert leak != held  # on digits the two differ, so the equality above is informative
    # the default runs the full budget: no stop target at all
    assert "stop_acc" not in method_hparams(RelearnSpec(dataset="digits"), prep,
                                            "gradient_ascent", {})
