"""The relearning attack and the metrics built on it."""

from __future__ import annotations

import torch

from dormant.attacks import RelearnConfig, RelearnData, relearn
from dormant.engine import evaluate
from dormant.engine import loop as engine_loop
from dormant.metrics import l2_distance, recovery, tow
from dormant.models import ModelSpec, create_model
from dormant.unlearn import unlearn


def _data(prep, k, kind="retain"):
    s = prep.split
    classes = torch.unique(prep.y[s.forget])
    return RelearnData.build(kind, prep.x, prep.y, prep.x_test, prep.y_test, s.retain,
                             s.leaked(k), s.heldout, classes)


def test_attack_trains_on_retain_plus_k_leaked_and_never_on_heldout(digits_setup, monkeypatch):
    prep = digits_setup
    seen = []
    real = engine_loop.forward
    monkeypatch.setattr(engine_loop, "forward",
                        lambda m, x, ids, r, g: (seen.append(ids), real(m, x, ids, r, g))[1])
    cfg = RelearnConfig(k=5, steps=60, lr=1e-4, eval_every=5, test_every=20)
    _, curve = relearn(prep.original, _data(prep, 5), cfg, prep.recipe)
    touched = torch.unique(torch.cat(seen))
    assert not torch.isin(touched, prep.split.heldout).any()
    assert set(prep.split.leaked(5).tolist()) <= set(touched.tolist())
    assert not torch.isin(touched, prep.split.leakable[5:]).any()
    assert curve.steps == list(range(5, 61, 5))  # dense held-out curve
    assert curve.test_steps == [20, 40, 60]  # sparse test curve
    assert curve.best == max(curve.forget_acc) and curve.last == curve.forget_acc[-1]


def test_gradient_ascent_knowledge_comes_back_but_the_oracle_stays(digits_setup):
    """The paper's finding, in miniature: retain-only fine-tuning (k = 0) restores the
    held-out forget accuracy of a gradient-ascent model, not the oracle's."""
    prep = digits_setup
    stop = evaluate(prep.oracle, prep.x, prep.y, prep.split.leakable).acc
    ga = unlearn("gradient_ascent", prep.original, prep.unlearn_data(), prep.context(None),
                 steps=200, lr=1e-4, stop_acc=stop)
    cfg = RelearnConfig(k=0, steps=150, lr=1e-4, final_lr=1e-5, eval_every=5, test_every=50)
    ga_before = evaluate(ga, prep.x, prep.y, prep.split.heldout).acc
    or_before = evaluate(prep.oracle, prep.x, prep.y, prep.split.heldout).acc
    _, ga_curve = relearn(ga, _data(prep, 0), cfg, prep.recipe)
    _, or_curve = relearn(prep.oracle, _data(prep, 0), cfg, prep.recipe)
    ga_rec, or_rec = recovery(ga_before, ga_curve.best), recovery(or_before, or_curve.best)
    assert ga_before < 60.0  # it did unlearn
    assert abs(or_rec) <= 10.0
    assert ga_rec >= or_rec + 20.0


def test_tow_recovery_and_l2():
    assert tow(100, 0, 100) == 100.0
    assert abs(tow(90, 50, 80) - 36.0) < 1e-9
    assert recovery(40.0, 95.0) == 55.0
    spec = ModelSpec("mlp", 1, 10, 8)
    a, b = create_model(spec, seed=0), create_model(spec, seed=0)
    assert l2_distance(a, b) == 0.0
    n = sum(p.numel() for p in b.parameters())
    with torch.no_grad():
        for p in b.parameters():
            p.add_(0.5)
    assert abs(l2_distance(a, b) - 0.5 * n**0.5) < 1e-6


def test_relearn_sets_hold_what_the_seed_code_puts_in_them(digits_setup):
    prep, s = digits_setup, digits_setup.split
    n = len(prep.x)
    cls = int(prep.y[s.forget[0]])
    retain = _data(prep, 5, "retain")
    assert retain.plain is None
    assert sorted(retain.pool.tolist()) == sorted(s.retain.tolist() + s.leaked(5).tolist())
    only = _data(prep, 5, "forget-only")
    assert only.pool.tolist() == s.leaked(5).tolist()
    test = _data(prep, 5, "test")
    assert sorted(test.pool.tolist()) == sorted(s.leaked(5).tolist() +
                                                list(range(n, n + len(prep.y_test))))
    assert test.plain[n:].all() and not test.plain[:n].any()  # test images never augmented
    assert torch.equal(test.x[n:], prep.x_test) and torch.equal(test.x[:n], prep.x)
    mixed = _data(prep, 0, "test+retain-class")
    from_test = mixed.pool[mixed.pool >= n]
    from_train = mixed.pool[mixed.pool < n]
    assert (mixed.y[from_test] != cls).all()  # test images of the other classes only
    assert len(from_test) == int((prep.y_test != cls).sum())
    assert (prep.y[from_train] == cls).all()  # plus the retain images of the forget class
    assert len(from_train) == int((prep.y[s.retain] == cls).sum())
    assert not torch.isin(from_train, s.forget).any()


def test_test_relearn_set_trains_on_test_images_unaugmented(digits_setup):
    """The attack on the test set moves the model; its held-out curve is still recorded."""
    prep = digits_setup
    cfg = RelearnConfig(k=0, steps=20, lr=1e-3, eval_every=5, test_every=10)
    attacked, curve = relearn(prep.original, _data(prep, 0, "test"), cfg, prep.recipe)
    assert curve.steps == [5, 10, 15, 20]
    assert l2_distance(attacked, prep.original) > 0.05
    # it fitted the images it trained on: test accuracy rises towards 100
    assert evaluate(attacked, prep.x_test, prep.y_test).acc > \
        evaluate(prep.original, prep.x_test, prep.y_test).acc
