"""Analysis metrics: AURC, linear mode connectivity and membership inference, in numbers."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from dormant.engine import Recipe, evaluate, fit
from dormant.metrics import (
    aurc,
    interpolate_state,
    lmc_curve,
    loss_auc,
    loss_barrier,
    softmax_features,
    svc_mia_auc,
)
from dormant.models import ModelSpec, create_model

# ---------------------------------------------------------------- AURC


def test_aurc_constant_curve_is_its_recovery():
    assert aurc([1, 10, 100, 1000], [60.0] * 4, 50.0) == pytest.approx(10.0)


def test_aurc_linear_in_log_step_is_exact_on_uneven_steps():
    # r = 10·log10(s): the mean over u in [0, 3] is 15, whatever the spacing of the points
    steps = [1, 2, 7, 10, 300, 1000]
    acc = [50 + 10 * math.log10(s) for s in steps]
    assert aurc(steps, acc, 50.0) == pytest.approx(15.0)
    # a step 0 point (before the attack) is not on the log axis and is ignored
    assert aurc([0, *steps], [99.0, *acc], 50.0) == pytest.approx(15.0)


def test_aurc_weighs_decades_equally():
    # 30 points back only at step 100: (0 + 0)/2 + (0 + 30)/2 over 2 decades = 7.5; back by
    # step 10 already: (0 + 30)/2 + (30 + 30)/2 over 2 decades = 22.5
    assert aurc([1, 10, 100], [50, 50, 80], 50) == pytest.approx(7.5)
    assert aurc([1, 10, 100], [50, 80, 80], 50) == pytest.approx(22.5)
    assert aurc([100, 1, 10], [80, 50, 80], 50) == pytest.approx(22.5)  # order-free


def test_aurc_single_and_no_point():
    assert aurc([40], [73.0], 50.0) == pytest.approx(23.0)
    assert math.isnan(aurc([0], [73.0], 50.0))


# ---------------------------------------------------------------- LMC


@pytest.fixture(scope="module")
def bn_pair(digits_setup):
    """Two cnn-small (BatchNorm) models on digits from different initialisations, and a
    third that is the first fine-tuned a little on the retain set."""
    prep = digits_setup
    spec = ModelSpec("cnn-small", 1, 10, 8)
    recipe = Recipe(steps=60, lr=3e-3, batch_size=64, augment="none")
    ids = torch.cat([prep.split.retain, prep.split.forget])
    models = []
    for seed in (0, 1):
        m = create_model(spec, seed=seed)
        fit(m, prep.x, prep.y, ids, recipe, generator=torch.Generator().manual_seed(seed))
        models.append(m)
    near = copy.deepcopy(models[0])
    fit(near, prep.x, prep.y, prep.split.retain, recipe.with_(steps=10, lr=1e-4),
        generator=torch.Generator().manual_seed(2))
    return models[0], models[1], near


def _sets(prep):
    return {"retain": (prep.x, prep.y, prep.split.retain),
            "forget": (prep.x, prep.y, prep.split.forget),
            "test": (prep.x_test, prep.y_test, None)}


def test_lmc_endpoints_reproduce_each_models_own_evaluation(digits_setup, bn_pair):
    a, b, _ = bn_pair
    sets = _sets(digits_setup)
    curve = lmc_curve(a, b, sets, points=5)
    assert curve["t"] == [0.0, 0.25, 0.5, 0.75, 1.0]
    for name, (x, y, ids) in sets.items():
        ea, eb = evaluate(a, x, y, ids), evaluate(b, x, y, ids)
        assert (curve[f"{name}_loss"][0], curve[f"{name}_acc"][0]) == (ea.loss, ea.acc)
        assert (curve[f"{name}_loss"][-1], curve[f"{name}_acc"][-1]) == (eb.loss, eb.acc)
        assert len(curve[f"{name}_acc"]) == 5


def test_lmc_leaves_both_models_untouched(digits_setup, bn_pair):
    a, b, _ = bn_pair
    a.train()
    before = [{k: v.clone() for k, v in m.state_dict().items()} for m in (a, b)]
    lmc_curve(a, b, _sets(digits_setup), points=3)
    for m, sd in zip((a, b), before, strict=True):
        for k, v in m.state_dict().items():
            assert torch.equal(v, sd[k]), k
    assert a.training


def test_interpolation_covers_batchnorm_buffers(bn_pair):
    a, b, _ = bn_pair
    sa, sb = a.state_dict(), b.state_dict()
    mid = interpolate_state(sa, sb, 0.5)
    assert set(mid) == set(sa)
    stats = [k for k in sa if k.endswith("running_var")]
    assert stats, "cnn-small should carry BatchNorm running statistics"
    for k in stats + [k.replace("running_var", "running_mean") for k in stats]:
        assert not torch.equal(sa[k], sb[k])
        torch.testing.assert_close(mid[k], (sa[k] + sb[k]) / 2)
    counters = [k for k in sa if k.endswith("num_batches_tracked")]
    sb_counted = {k: v.clone() for k, v in sb.items()}
    for k in counters:
        sb_counted[k] = sb[k] + 7
        assert torch.equal(interpolate_state(sa, sb_counted, 0.3)[k], sb[k] + 7)
    quarter = interpolate_state(sa, sb, 0.25)
    w = next(k for k in sa if k.endswith("weight"))
    torch.testing.assert_close(quarter[w], 0.75 * sa[w] + 0.25 * sb[w])
    assert torch.equal(interpolate_state(sa, sb, 0.0)[w], sa[w])
    assert torch.equal(interpolate_state(sa, sb, 1.0)[w], sb[w])


def test_interpolation_refuses_mismatched_models(bn_pair):
    a, _, _ = bn_pair
    other = create_model(ModelSpec("mlp", 1, 10, 8), seed=0)
    with pytest.raises(ValueError, match="differ"):
        interpolate_state(a.state_dict(), other.state_dict(), 0.5)


def test_loss_barrier_of_line_bump_and_valley():
    t = [i / 10 for i in range(11)]
    line = [2.0 - 1.5 * ti for ti in t]
    assert loss_barrier(t, line) == pytest.approx(0.0, abs=1e-12)
    bump = [v + (0.8 if i == 5 else 0.0) for i, v in enumerate(line)]
    assert loss_barrier(t, bump) == pytest.approx(0.8)
    tent = [v + 0.6 * (1 - abs(2 * ti - 1)) for ti, v in zip(t, line, strict=True)]
    assert loss_barrier(t, tent) == pytest.approx(0.6)
    valley = [v - 0.3 * math.sin(math.pi * ti) for ti, v in zip(t, line, strict=True)]
    assert loss_barrier(t, valley) == pytest.approx(0.0, abs=1e-12)  # the ends bound it


def test_barrier_separates_independent_models_from_a_fine_tuned_copy(digits_setup, bn_pair):
    a, b, near = bn_pair
    sets = {"retain": _sets(digits_setup)["retain"]}
    far = lmc_curve(a, b, sets, points=11)
    close = lmc_curve(a, near, sets, points=11)
    far_barrier = loss_barrier(far["t"], far["retain_loss"])
    close_barrier = loss_barrier(close["t"], close["retain_loss"])
    assert far_barrier > 0.5  # two inits: no linear path of low loss
    assert close_barrier < 0.05  # a few small steps stay in the same basin
    assert min(far["retain_acc"]) < 60 < min(close["retain_acc"])


# ---------------------------------------------------------------- membership inference


class _Lookup(nn.Module):
    """Logits = 20 x the flattened 1x1x10 image: a one-hot image is classified with near
    certainty, an all-black one gets uniform logits."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(10, 10, bias=False)
        with torch.no_grad():
            self.fc.weight.copy_(20 * torch.eye(10))

    def forward(self, x):
        return self.fc(x.flatten(1))


def _toy(n=60, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 10, (2 * n,), generator=g)
    x = torch.zeros(2 * n, 1, 1, 10, dtype=torch.uint8)
    amp = torch.randint(120, 256, (n,), generator=g).to(torch.uint8)
    x[torch.arange(n), 0, 0, y[:n]] = amp  # first half: confident and right
    x[n:, 0, 0, :] = torch.randint(0, 12, (n, 10), generator=g).to(torch.uint8)  # near-uniform
    return x, y, torch.arange(n), torch.arange(n, 2 * n)


def test_softmax_features_match_their_definitions():
    x, y, _, _ = _toy(8)
    f = softmax_features(_Lookup(), x, y, torch.arange(16))
    with torch.no_grad():
        p = _Lookup()(x.float() / 255).double().softmax(1)
    py = p[torch.arange(16), y]
    np.testing.assert_allclose(f[:, 0], py.numpy(), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(f[:, 1], (-(p * p.log()).sum(1)).numpy(), rtol=1e-6, atol=1e-9)
    wrong = torch.ones_like(p, dtype=torch.bool)
    wrong[torch.arange(16), y] = False
    mentr = -(1 - py) * py.log() - (p * (1 - p).log() * wrong).sum(1)
    np.testing.assert_allclose(f[:, 2], mentr.numpy(), rtol=1e-6, atol=1e-9)
    # confident-and-right examples have low entropy and low modified entropy
    assert f[:8, 2].max() < f[8:, 2].min()


def test_attacks_are_perfect_on_a_model_that_knows_only_the_target():
    x, y, confident, vague = _toy()
    assert loss_auc(_Lookup(), x, y, confident, x, y, vague) == 1.0
    assert loss_auc(_Lookup(), x, y, vague, x, y, confident) == 0.0
    shadow_in, target = confident[:30], confident[30:]
    shadow_out, eval_out = vague[:30], vague[30:]
    assert svc_mia_auc(_Lookup(), x, y, shadow_in, x, y, shadow_out, target, eval_out) == 1.0
    assert svc_mia_auc(_Lookup(), x, y, shadow_in, x, y, shadow_out, eval_out, target) == 0.0


@pytest.fixture(scope="module")
def overfit(digits_setup):
    """An MLP fitted to 120 digits only (100% train, ~90% test): 60 shadow members and 60
    target members, and the test set split in disjoint shadow-out / eval-out halves."""
    prep = digits_setup
    members = torch.randperm(len(prep.y), generator=torch.Generator().manual_seed(0))[:120]
    model = create_model(ModelSpec("mlp", 1, 10, 8), seed=0)
    fit(model, prep.x, prep.y, members,
        Recipe(steps=400, lr=1e-3, batch_size=64, augment="none", schedule="constant"),
        generator=torch.Generator().manual_seed(0))
    halves = torch.randperm(len(prep.y_test), generator=torch.Generator().manual_seed(1))
    return model, members[:60], members[60:], halves[:180], halves[180:]


def test_members_score_above_unseen_data(digits_setup, overfit):
    prep = digits_setup
    model, shadow_in, target, shadow_out, eval_out = overfit
    assert evaluate(model, prep.x, prep.y, target).acc == 100.0
    X, Y = prep.x_test, prep.y_test
    loss = loss_auc(model, prep.x, prep.y, target, X, Y, eval_out)
    svc = svc_mia_auc(model, prep.x, prep.y, shadow_in, X, Y, shadow_out, target, eval_out)
    assert loss > 0.6 and svc > 0.6
    # test images as the "target": indistinguishable from the other unseen half
    xa, ya = torch.cat([prep.x, X]), torch.cat([prep.y, Y])
    fake, rest = eval_out[:90] + len(prep.x), eval_out[90:]
    null_loss = loss_auc(model, xa, ya, fake, X, Y, rest)
    null_svc = svc_mia_auc(model, xa, ya, shadow_in, X, Y, shadow_out, fake, rest)
    assert abs(null_loss - 0.5) < 0.06 and abs(null_svc - 0.5) < 0.06
    assert loss - null_loss > 0.1 and svc - null_svc > 0.08


def test_svc_mia_is_seeded_and_capped(digits_setup, overfit):
    prep = digits_setup
    model, shadow_in, target, shadow_out, eval_out = overfit
    args = (model, prep.x, prep.y, shadow_in, prep.x_test, prep.y_test, shadow_out, target,
            eval_out)
    assert svc_mia_auc(*args, seed=3) == svc_mia_auc(*args, seed=3)
    # a cap of 20 trains on a 20 + 20 subsample: another subsample, another AUC, still > 0.5
    small = [svc_mia_auc(*args, seed=s, max_shadow=20) for s in (0, 1)]
    assert small[0] != small[1] and min(small) > 0.5


def test_original_remembers_the_forget_set_more_than_the_oracle(digits_setup):
    """The digits forget set is atypical, so its loss is above typical test images even for
    the original (AUC < 0.5); the oracle, which never saw it, scores it lower still."""
    prep = digits_setup
    X, Y = prep.x_test, prep.y_test
    halves = torch.randperm(len(Y), generator=torch.Generator().manual_seed(1))
    aucs = {name: (loss_auc(m, prep.x, prep.y, prep.split.forget, X, Y, halves[180:]),
                   svc_mia_auc(m, prep.x, prep.y, prep.split.retain, X, Y, halves[:180],
                               prep.split.forget, halves[180:]))
            for name, m in (("original", prep.original), ("oracle", prep.oracle))}
    assert aucs["original"][0] > aucs["oracle"][0] + 0.1
    assert aucs["original"][1] > aucs["oracle"][1] + 0.04
