"""I-BAU: the inner maximisation finds a loss-raising universal perturbation, the implicit
hypergradient equals its closed form, and the outer steps are the only thing that moves the
model, teaching it to resist the perturbation it was shown."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from dormant.defenses import IBAUConfig, hypergradient, ibau, universal_perturbation
from dormant.engine import evaluate, to_float
from dormant.errors import DormantError
from dormant.models import ModelSpec, create_model


def _halves(digits):
    """The defender's clean images (even test ids, true labels) and the held-out rest."""
    n = len(digits.y_test)
    return torch.arange(0, n, 2), torch.arange(1, n, 2)


def _ce(model, x, y) -> float:
    with torch.no_grad():
        return float(F.cross_entropy(model(x), y))


def test_universal_perturbation_raises_the_loss(digits, digits_backdoor):
    model = digits_backdoor["badnets"]  # an MLP: its mode changes nothing, so it is left alone
    mode = model.training
    before = copy.deepcopy(model.state_dict())
    clean, _ = _halves(digits)
    x, y = to_float(digits.x_test[clean]), digits.y_test[clean]
    # batch 32: six SGD steps on delta over the 180 clean images
    delta = universal_perturbation(model, digits.x_test, clean, IBAUConfig(batch_size=32))
    assert delta.shape == (1, 1, 8, 8)
    noise = torch.randn(delta.shape, generator=torch.Generator().manual_seed(0))
    noise = noise / noise.norm() * delta.norm()
    # measured: CE 0.125 clean, 869 with delta, 178 with random noise of delta's norm
    assert _ce(model, x, y) < 0.2
    assert _ce(model, x + delta, y) > 1000 * _ce(model, x, y)
    assert _ce(model, x + delta, y) > 3 * _ce(model, x + noise, y)
    # one SGD step (a single batch of 256, BackdoorBench's batch) already beats noise:
    # measured 0.229 vs 0.133 for noise and 0.125 clean
    step = universal_perturbation(model, digits.x_test, clean, IBAUConfig(batch_size=256))
    noise = noise / noise.norm() * step.norm()
    assert _ce(model, x + step, y) > 1.5 * _ce(model, x, y)
    assert _ce(model, x + step, y) > 1.5 * _ce(model, x + noise, y)
    # the same seed gives the same delta; the model is handed back as it came
    again = universal_perturbation(model, digits.x_test, clean, IBAUConfig(batch_size=32))
    assert torch.equal(again, delta)
    assert model.training == mode
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_ibau_unlearns_the_perturbation_it_finds(digits, digits_backdoor):
    """One round with the original's lr 1e-3 and one patched image per batch (the original
    patches one image of each batch of 100): the model's loss on held-out images plus that
    round's delta falls by a quarter (measured x0.76; seeds 1, 2: x0.75, x0.77), while the
    same steps without delta in the outer loss leave it alone (x0.99) and clean accuracy stays
    at 95-96%.

    Not asserted because it does not happen: ASR on this BadNets MLP stays ~100% over 1 round
    and is erratic over 5 (100% at lr 1e-4; 20-100% with clean accuracy at 50-90% at lr
    1e-3, depending on the seed). On 8x8 digits the universal perturbation heads for
    whichever class is cheapest (1, 3, 5, 7 or 9 here; 4 once x + delta is clamped to
    [0, 1]), rarely the backdoor target 0, so the unlearning rarely meets the trigger."""
    model = digits_backdoor["badnets"]
    before = copy.deepcopy(model.state_dict())
    clean, held = _halves(digits)
    x, y = to_float(digits.x_test[held]), digits.y_test[held]
    cfg = IBAUConfig(rounds=1, lr=1e-3, batch_size=32, portion=1 / 32)
    delta = universal_perturbation(model, digits.x_test, clean, cfg)  # round 1's delta
    base_loss = _ce(model, x + delta, y)
    base_acc = evaluate(model, digits.x_test, digits.y_test, held).acc
    mitigated = ibau(model, digits.x_test, digits.y_test, clean, cfg)
    control = ibau(model, digits.x_test, digits.y_test, clean,
                   IBAUConfig(rounds=1, lr=1e-3, batch_size=32, portion=0.0))
    assert _ce(mitigated.eval(), x + delta, y) < 0.85 * base_loss
    assert _ce(control.eval(), x + delta, y) > 0.95 * base_loss
    assert abs(evaluate(mitigated, digits.x_test, digits.y_test, held).acc - base_acc) < 3.0
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_only_the_hypergradient_steps_move_the_model(digits, digits_backdoor):
    # a BatchNorm model at its initial statistics: any train-mode forward would move them
    cnn = create_model(ModelSpec("cnn-small", 1, 10, 8), seed=0)
    ids = torch.arange(0, len(digits.y_test), 2)
    out = ibau(cnn, digits.x_test, digits.y_test, ids,
               IBAUConfig(rounds=2, lr=0.0, batch_size=64, portion=0.5))
    sd = out.state_dict()
    assert all(torch.equal(v, sd[k]) for k, v in cnn.state_dict().items())
    # one batch, every image patched, one Adam step: each weight moves by lr against the sign
    # of the hypergradient, exactly Adam's first step on it
    model = digits_backdoor["badnets"]
    cfg = IBAUConfig(rounds=1, lr=1e-3, batch_size=256, portion=1.0)
    stepped = ibau(model, digits.x_test, digits.y_test, ids, cfg)
    delta = universal_perturbation(model, digits.x_test, ids, cfg)
    xb, yb = to_float(digits.x_test[ids]), digits.y_test[ids]
    grads = hypergradient(model, delta, xb, yb, torch.ones(len(ids), 1, 1, 1), xb, yb, cfg)
    for p0, p1, g in zip(model.parameters(), stepped.parameters(), grads, strict=True):
        moved = (p1 - p0).detach()
        big = g.abs() > 1e-6
        assert big.float().mean() > 0.5
        assert torch.equal(torch.sign(moved[big]), -torch.sign(g[big]))
        assert torch.allclose(moved[big].abs(), torch.full_like(moved[big], cfg.lr), rtol=1e-2)


def test_fixed_point_iteration_matches_the_explicit_neumann_series(digits, digits_backdoor):
    """v_K = sum_{k<K} (J^T)^k grad_delta L_out with J = dPhi/ddelta built as a 64x64 matrix;
    the hypergradient is grad_theta L_out + (dPhi/dtheta)^T v_K."""
    model = digits_backdoor["badnets"]
    cfg = IBAUConfig(fixed_point_steps=7)
    x = to_float(digits.x_test[:80])
    y = digits.y_test[:80]
    delta = universal_perturbation(model, digits.x_test, torch.arange(80),
                                   IBAUConfig(batch_size=16, inner_lr=1.0))
    patched = torch.zeros(40, 1, 1, 1)
    patched[:3] = 1.0
    got = hypergradient(model, delta, x[:40], y[:40], patched, x[40:], y[40:], cfg)
    params = list(model.parameters())

    def phi(d):
        inner = -F.cross_entropy(model(x[40:] + d), y[40:]) + cfg.l2 * d.pow(2).sum()
        (g,) = torch.autograd.grad(inner, d, create_graph=True)
        return d - cfg.fixed_point_lr * g

    jac = torch.autograd.functional.jacobian(
        lambda d: phi(d if d.requires_grad else d.requires_grad_()), delta.clone()
    ).reshape(64, 64)
    d = delta.clone().requires_grad_(True)
    g_delta, *g_theta = torch.autograd.grad(
        F.cross_entropy(model(x[:40] + d * patched), y[:40]), [d, *params])
    v = torch.zeros(64)
    for _ in range(cfg.fixed_point_steps):
        v = jac.T @ v + g_delta.flatten()
    implicit = torch.autograd.grad(phi(d), params, grad_outputs=v.reshape(delta.shape))
    for a, b, c in zip(got, implicit, g_theta, strict=True):
        assert torch.allclose(a, b + c, rtol=1e-4, atol=1e-7)
    # the implicit term is a real part of the answer, not a rounding error
    weight = 0
    assert (implicit[weight].norm() / g_theta[weight].norm()) > 0.02


@pytest.mark.parametrize("bad", [dict(rounds=0), dict(fixed_point_steps=0), dict(batch_size=0),
                                 dict(lr=-1e-3), dict(inner_lr=0.0), dict(fixed_point_lr=0.0),
                                 dict(l2=-1.0), dict(portion=1.5)])
def test_config_is_validated(bad):
    with pytest.raises(DormantError, match="i-bau"):
        IBAUConfig(**bad)
