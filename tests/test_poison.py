"""Backdoor triggers and poisoned training sets: what they change, and that BadNets works."""

from __future__ import annotations

import pytest
import torch

from dormant.attacks import PoisonSpec, Trigger, attack_success_rate, poison
from dormant.engine import Recipe, evaluate, fit
from dormant.errors import DormantError
from dormant.models import ModelSpec, create_model


def _images(n=6, c=1, h=8, w=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, c, h, w), generator=g, dtype=torch.uint8)


@pytest.mark.parametrize("kind", ["patch", "blend", "noise", "sinusoid"])
def test_amplitude_zero_is_the_identity_and_stamping_is_batched(kind):
    x = _images()
    assert torch.equal(Trigger(kind, amplitude=0.0).stamp(x), x)
    t = Trigger(kind, amplitude=0.3, size=2)
    batch = t.stamp(x)
    assert batch.dtype == torch.uint8 and batch.shape == x.shape
    one_by_one = torch.cat([t.stamp(x[i : i + 1]) for i in range(len(x))])
    assert torch.equal(batch, one_by_one)
    assert not torch.equal(batch, x)


def test_patch_changes_only_its_corner_and_full_amplitude_is_badnets():
    x = _images(c=3)
    out = Trigger("patch", amplitude=1.0, size=3).stamp(x)
    changed = (out != x).any(dim=(0, 1))
    assert not changed[:5].any() and not changed[:, :5].any()  # outside the 3x3 corner
    corner = out[:, :, 5:, 5:]
    # a hard checkerboard: every pixel black or white, identical on every image
    assert set(corner.unique().tolist()) <= {0, 255}
    assert (corner == corner[0]).all()


def test_additive_triggers_move_pixels_by_at_most_the_amplitude():
    x = torch.full((4, 1, 8, 8), 128, dtype=torch.uint8)
    for kind in ("noise", "sinusoid"):
        out = Trigger(kind, amplitude=0.05).stamp(x)
        diff = (out.int() - x.int()).abs()
        assert diff.max() <= round(0.05 * 255) + 1 and diff.max() >= 5
    blend = Trigger("blend", amplitude=1.0, seed=3).stamp(x)
    # at full amplitude the image is replaced by the seeded pattern, whatever it was
    assert torch.equal(blend, Trigger("blend", amplitude=1.0, seed=3).stamp(_images(n=4)))
    assert not torch.equal(blend, Trigger("blend", amplitude=1.0, seed=4).stamp(x))


@pytest.mark.parametrize("trigger, needle", [
    (dict(kind="patch", size=9), "does not fit 8x8"),
    (dict(amplitude=1.5), "trigger: key 'amplitude': "),
    (dict(amplitude=-0.1), "trigger: key 'amplitude': "),
    (dict(kind="star"), "unknown trigger 'star'"),
])
def test_bad_triggers_are_one_clear_error(trigger, needle):
    with pytest.raises(DormantError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        Trigger(**trigger).check((1, 8, 8))


def test_dirty_label_poisons_carry_the_trigger_and_the_target_label(digits):
    x, y = digits.x_train, digits.y_train
    spec = PoisonSpec(target=0, trigger=Trigger("patch", size=2), per_class=5)
    p = poison(x, y, spec, 10, seed=0)
    assert len(p.ids) == 45
    assert torch.bincount(y[p.ids], minlength=10).tolist() == [0] + [5] * 9
    assert (p.y[p.ids] == 0).all()
    assert torch.equal(p.x[p.ids], spec.trigger.stamp(x[p.ids]))
    rest = torch.ones(len(y), dtype=torch.bool)
    rest[p.ids] = False
    assert torch.equal(p.x[rest], x[rest]) and torch.equal(p.y[rest], y[rest])
    assert torch.equal(poison(x, y, spec, 10, seed=0).ids, p.ids)  # seeded
    assert not torch.equal(poison(x, y, spec, 10, seed=1).ids, p.ids)


def test_clean_label_poisons_keep_every_label(digits):
    x, y = digits.x_train, digits.y_train
    spec = PoisonSpec(target=3, trigger=Trigger("blend", amplitude=0.2), per_class=2,
                      sources=(1, 2, 5), label_mode="clean")
    p = poison(x, y, spec, 10, seed=0)
    assert len(p.ids) == 6 and (y[p.ids] == 3).all()
    assert torch.equal(p.y, y)  # not a single label changed
    assert not torch.equal(p.x[p.ids], x[p.ids])


@pytest.mark.parametrize("spec, needle", [
    (dict(target=10), "target class 10 does not exist"),
    (dict(target=0, sources=(0, 1)), "source class 0"),
    (dict(target=0, per_class=1000), "1000 poisons asked of class 1"),
    (dict(target=0, label_mode="sneaky"), "key 'label_mode': Input should be 'dirty' or"),
])
def test_bad_poison_specs_are_one_clear_error(digits, spec, needle):
    full = {"trigger": Trigger("patch", size=2), "per_class": 5, **spec}
    with pytest.raises(DormantError, match=needle):
        poison(digits.x_train, digits.y_train, PoisonSpec(**full), 10, seed=0)


def test_badnets_plants_a_backdoor_that_a_clean_model_lacks(digits):
    """The baseline the defenses must catch: 10% BadNets poisons give a near-certain
    backdoor at no cost in clean accuracy; the same training without poisons has none."""
    trigger = Trigger("patch", size=3)
    spec = PoisonSpec(target=0, trigger=trigger, per_class=16)
    x, y = digits.x_train, digits.y_train
    p = poison(x, y, spec, 10, seed=0)
    recipe = Recipe(steps=600, lr=1e-3, augment="none", final_lr=1e-5)
    asr, acc = {}, {}
    for name, (xt, yt) in {"clean": (x, y), "poisoned": (p.x, p.y)}.items():
        model = create_model(ModelSpec("mlp", 1, 10, 8), seed=0)
        g = torch.Generator().manual_seed(0)
        fit(model, xt, yt, torch.arange(len(yt)), recipe, generator=g)
        asr[name] = attack_success_rate(model, digits.x_test, digits.y_test, trigger, 0)
        acc[name] = evaluate(model, digits.x_test, digits.y_test).acc
    assert asr["poisoned"] >= 90.0
    assert asr["clean"] <= 20.0
    assert acc["poisoned"] >= acc["clean"] - 3.0
