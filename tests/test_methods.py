"""Each unlearning method's defining property, asserted in numbers on the digits setup."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from dormant.engine import evaluate
from dormant.engine import loop as engine_loop
from dormant.errors import DormantError
from dormant.metrics import l2_distance
from dormant.unlearn import available_methods, get_method, make_hparams, unlearn


def _acc(prep, model, ids):
    return evaluate(model, prep.x, prep.y, ids).acc


@pytest.fixture
def spy_batches(monkeypatch):
    """Every id any training batch touched, recorded at the engine's single forward path."""
    seen: list[torch.Tensor] = []
    original = engine_loop.forward

    def recording(model, x, ids, recipe, generator):
        seen.append(ids.detach().cpu())
        return original(model, x, ids, recipe, generator)

    monkeypatch.setattr(engine_loop, "forward", recording)
    monkeypatch.setattr("dormant.engine.forward", recording)  # what methods import on use
    return seen


def test_registry_has_the_foundation_methods():
    assert {"retrain", "finetune", "gradient_ascent", "neggrad_plus"} <= set(available_methods())
    for name in available_methods():
        info = get_method(name)
        assert dataclasses.is_dataclass(info.hparams)
        assert info.hparams.__dataclass_params__.frozen
        assert info.summary, f"{name} needs a docstring citing its source"


def test_paper_defaults():
    assert make_hparams("gradient_ascent").lr == 1e-5
    assert make_hparams("neggrad_plus").steps == 39_100
    assert make_hparams("finetune").weight_decay == 1e-3


def test_unknown_hparam_is_named():
    with pytest.raises(DormantError, match="no hyper-parameter 'alpha'"):
        make_hparams("gradient_ascent", {"alpha": 1})
    with pytest.raises(DormantError, match="^method 'finetune': hyper-parameter 'steps': "
                       "must be positive, got 0$"):
        make_hparams("finetune", {"steps": 0})


def test_retrain_never_sees_a_forget_id(digits_setup, spy_batches):
    prep = digits_setup
    model = unlearn("retrain", prep.original, prep.unlearn_data(), prep.context(None))
    touched = torch.unique(torch.cat(spy_batches))
    # as many steps as the original took (it stops at 99% fit), on the same schedule
    assert len(spy_batches) == prep.recipe.stop_after == prep.train_steps_taken
    assert not torch.isin(touched, prep.split.forget).any()
    assert len(touched) == len(prep.split.retain)  # every retain image was used
    # the oracle forgets: held-out forget accuracy far below the original's
    assert _acc(prep, prep.original, prep.split.heldout) == 100.0
    assert _acc(prep, model, prep.split.heldout) < 60.0
    # same init, same recipe, same seed: identical to the cached oracle
    assert l2_distance(model, prep.oracle) == 0.0


def test_finetune_only_touches_retain(digits_setup, spy_batches):
    prep = digits_setup
    before = _acc(prep, prep.original, prep.split.retain)
    model = unlearn("finetune", prep.original, prep.unlearn_data(), prep.context(None),
                    steps=50, lr=1e-4)
    touched = torch.unique(torch.cat(spy_batches))
    assert len(spy_batches) == 50
    assert not torch.isin(touched, prep.split.forget).any()
    assert abs(_acc(prep, model, prep.split.retain) - before) < 3.0
    assert l2_distance(model, prep.original) > 0


def test_gradient_ascent_lowers_forget_accuracy(digits_setup, spy_batches):
    prep = digits_setup
    model = unlearn("gradient_ascent", prep.original, prep.unlearn_data(), prep.context(None),
                    steps=30, lr=1e-4)
    touched = torch.unique(torch.cat(spy_batches))
    assert set(touched.tolist()) <= set(prep.split.forget.tolist())  # forget data only
    assert _acc(prep, prep.original, prep.split.forget) == 100.0
    assert _acc(prep, model, prep.split.forget) < 50.0
    assert evaluate(model, prep.x, prep.y, prep.split.forget).loss > evaluate(
        prep.original, prep.x, prep.y, prep.split.forget).loss


def test_unlearn_leaves_the_input_model_untouched(digits_setup):
    prep = digits_setup
    before = {k: v.clone() for k, v in prep.original.state_dict().items()}
    unlearn("gradient_ascent", prep.original, prep.unlearn_data(), prep.context(None), steps=5)
    for k, v in prep.original.state_dict().items():
        assert torch.equal(v, before[k])


def test_neggrad_plus_alternates_and_keeps_retain(digits_setup, spy_batches):
    prep = digits_setup
    forget = set(prep.split.forget.tolist())
    model = unlearn("neggrad_plus", prep.original, prep.unlearn_data(), prep.context(None),
                    steps=36, lr=3e-4)
    kinds = ["f" if set(b.tolist()) <= forget else "r" for b in spy_batches]
    # one forget batch (the set is smaller than a batch), then a full retain pass
    n_retain = -(-len(prep.split.retain) // 128)
    assert "".join(kinds[: 2 * (n_retain + 1)]) == ("f" + "r" * n_retain) * 2
    assert kinds.count("f") == -(-36 // (n_retain + 1))
    # measured: forget 100 -> 18%, retain 99.4 -> 97.4%
    assert _acc(prep, model, prep.split.forget) < 40.0
    assert _acc(prep, model, prep.split.retain) > _acc(prep, prep.original, prep.split.retain) - 5


def test_stopping_rule_never_evaluates_the_heldout_split(digits_setup, monkeypatch):
    prep = digits_setup
    evaluated: list[torch.Tensor] = []
    import dormant.engine

    real = dormant.engine.evaluate

    def spy(model, x, y, ids=None, batch_size=1024):
        evaluated.append(ids.cpu())
        return real(model, x, y, ids, batch_size)

    monkeypatch.setattr(dormant.engine, "evaluate", spy)  # the rule imports it on use
    model = unlearn("gradient_ascent", prep.original, prep.unlearn_data(), prep.context(None),
                    steps=500, lr=1e-4, stop_acc=50.0)
    assert evaluated, "the stopping rule must evaluate something"
    for ids in evaluated:
        assert not torch.isin(ids, prep.split.heldout).any()
        assert torch.equal(ids, prep.split.leakable)
    # it stopped early: one evaluation per step, far fewer than the budget
    assert len(evaluated) < 100
    assert _acc(prep, model, prep.split.leakable) <= 50.0
