"""engine.grads: vmap per-sample gradients and Fisher against batch-size-1 autograd loops."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dormant.engine import Recipe, fit, to_float
from dormant.engine.grads import batch_grad_importance, diag_fisher, per_sample_grads
from dormant.models import ModelSpec, create_model

N = 24  # samples compared against the loops


@pytest.fixture(scope="module")
def models(digits):
    """A cnn-small (BatchNorm) fitted briefly on digits, so its running statistics are far from
    their initial 0/1 and eval semantics matter, and a fresh MLP."""
    x, y = digits.x_train, digits.y_train
    cnn = create_model(ModelSpec("cnn-small", 1, 10, 8), seed=0)
    fit(cnn, x, y, torch.arange(len(x)), Recipe(steps=20, lr=3e-3, augment="none"),
        generator=torch.Generator().manual_seed(0))
    mlp = create_model(ModelSpec("mlp", 1, 10, 8), seed=0)
    return {"cnn-small": cnn, "mlp": mlp}


@pytest.fixture(scope="module")
def batch(digits):
    ids = torch.arange(0, 10 * N, 10)  # spread over the classes
    return digits.x_train[ids], digits.y_train[ids]


def loop_grads(model, x, y) -> dict[str, torch.Tensor]:
    """The reference: one eval-mode forward/backward per sample."""
    model.eval()
    out: dict[str, list[torch.Tensor]] = {n: [] for n, _ in model.named_parameters()}
    for i in range(len(x)):
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(to_float(x[i : i + 1])), y[i : i + 1]).backward()
        for n, p in model.named_parameters():
            out[n].append(p.grad.clone())
    model.zero_grad(set_to_none=True)
    model.train()
    return {n: torch.stack(v) for n, v in out.items()}


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[n] - b[n]).abs().max().item() for n in a)


@pytest.mark.parametrize("name", ["cnn-small", "mlp"])
def test_per_sample_grads_match_a_batch_size_1_loop(models, batch, name):
    model = models[name]
    x, y = batch
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    model.train()
    got = per_sample_grads(model, to_float(x), y)
    want = loop_grads(model, x, y)
    assert all(got[n].shape == (N, *p.shape) for n, p in model.named_parameters())
    assert max_diff(got, want) <= 1e-5
    assert max(v.abs().max().item() for v in want.values()) > 1e-2  # not a vacuous match
    # eval semantics without side effects: running statistics untouched, mode restored
    assert model.training
    for n, b in model.named_buffers():
        assert torch.equal(b, buffers[n]), n
    if name == "cnn-small":
        assert buffers["0.1.running_var"].sub(1).abs().max() > 0.05  # the stats were fitted


@pytest.mark.parametrize("name", ["cnn-small", "mlp"])
def test_empirical_fisher_is_the_mean_of_squared_loop_grads(models, batch, name):
    model = models[name]
    x, y = batch
    ids = torch.arange(N)
    want = {n: g.square().mean(0) for n, g in loop_grads(model, x, y).items()}
    got = diag_fisher(model, x, y, ids, kind="empirical")
    assert max_diff(got, want) <= 1e-6
    summed = diag_fisher(model, x, y, ids, kind="empirical", reduce="sum")
    assert max_diff(summed, {n: v * N for n, v in want.items()}) <= 1e-5
    assert all(v.dtype == torch.float32 for v in got.values())


def test_expected_fisher_matches_an_explicit_loop_over_classes(models, batch):
    model = models["cnn-small"]
    x, y = batch[0][:5], batch[1][:5]
    model.eval()
    want = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for i in range(len(x)):
        logits = model(to_float(x[i : i + 1]))
        prob = logits.softmax(-1).detach()[0]
        for k in range(10):
            model.zero_grad(set_to_none=True)
            F.cross_entropy(logits, torch.tensor([k])).backward(retain_graph=True)
            for n, p in model.named_parameters():
                want[n] += prob[k] * p.grad.square() / len(x)
    model.train()
    got = diag_fisher(model, x, y, torch.arange(len(x)), kind="expected")
    assert max_diff(got, want) <= 1e-6
    assert max(v.abs().max().item() for v in want.values()) > 1e-3
    # the labels play no part in the expected Fisher
    shuffled = diag_fisher(model, x, y.flip(0), torch.arange(len(x)), kind="expected")
    assert max_diff(got, shuffled) == 0.0


@pytest.mark.parametrize("kind", ["empirical", "expected"])
def test_chunk_size_does_not_change_the_result(models, batch, kind):
    model = models["cnn-small"]
    x, y = batch
    ids = torch.arange(N)
    results = [diag_fisher(model, x, y, ids, kind=kind, batch_size=b) for b in (1, 5, N, None)]
    for other in results[1:]:
        assert max_diff(results[0], other) <= 1e-7
    whole = per_sample_grads(model, to_float(x), y)
    chunked = per_sample_grads(model, to_float(x), y, chunk_size=7)
    assert max_diff(whole, chunked) <= 1e-6  # float rounding of gradients of order 0.1


def test_batch_importance_averages_squared_batch_mean_gradients(models, digits):
    """SSD's importance is a different quantity from the Fisher: squared *batch-mean*
    gradients; with batches of one sample it must coincide with the empirical Fisher."""
    model = models["mlp"]
    x, y = digits.x_train[:50], digits.y_train[:50]
    ids = torch.arange(50).flip(0)  # batches follow the given order; the last one is short
    want = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for start in range(0, 50, 16):
        b = ids[start : start + 16]
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(to_float(x[b])), y[b]).backward()
        for n, p in model.named_parameters():
            want[n] += p.grad.square() / 4  # 4 batches: 16, 16, 16, 2
    model.zero_grad(set_to_none=True)
    got = batch_grad_importance(model, x, y, ids, batch_size=16)
    assert max_diff(got, want) <= 1e-6
    summed = batch_grad_importance(model, x, y, ids, batch_size=16, reduce="sum")
    assert max_diff(summed, {n: v * 4 for n, v in want.items()}) <= 1e-6
    singles = batch_grad_importance(model, x, y, ids, batch_size=1)
    assert max_diff(singles, diag_fisher(model, x, y, ids)) <= 1e-6
    # batch-mean gradients cancel across samples: far below the per-sample Fisher
    fisher = diag_fisher(model, x, y, ids)
    assert sum(v.sum() for v in got.values()) < 0.5 * sum(v.sum() for v in fisher.values())
