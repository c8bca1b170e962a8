"""The clean-unlearning attack's pieces: poisons stay inside the attacker's contribution, the
deletion request is clean and is the surrogate's top of the ranking, the control is random."""

from __future__ import annotations

import pytest
import torch

from dormant.attacks import PoisonSpec, Trigger
from dormant.attacks.clean_unlearning import (
    CleanUnlearningSpec,
    is_clean,
    plant,
    random_request,
    select_request,
    target_margin,
)
from dormant.errors import DormantError

TRIGGER = Trigger("noise", amplitude=0.1, seed=1)


def _spec(**kw) -> CleanUnlearningSpec:
    args = dict(poison=PoisonSpec(target=0, trigger=TRIGGER, per_class=3), contribution=0.3,
                request=40)
    return CleanUnlearningSpec(**{**args, **kw})


def test_plant_poisons_only_inside_the_contribution(digits):
    x, y = digits.x_train, digits.y_train
    p = plant(x, y, _spec(), 10, seed=0)
    assert len(p.contribution) == round(0.3 * len(y))
    assert torch.isin(p.poisons, p.contribution).all()
    assert len(p.poisons) == 27  # 3 per source class, 9 source classes
    assert (p.y[p.poisons] == 0).all() and (y[p.poisons] != 0).all()
    assert torch.equal(p.x[p.poisons], TRIGGER.stamp(x[p.poisons]))
    untouched = torch.ones(len(y), dtype=torch.bool)
    untouched[p.poisons] = False
    assert torch.equal(p.x[untouched], x[untouched]) and torch.equal(p.y[untouched],
                                                                     y[untouched])
    # the clean pool: the contribution's own clean images of classes other than the target
    assert torch.isin(p.clean_pool, p.contribution).all()
    assert not torch.isin(p.clean_pool, p.poisons).any() and (y[p.clean_pool] != 0).all()
    # inputs are not modified in place
    assert not torch.equal(p.x, x)


@pytest.mark.parametrize("strategy", ["margin", "stamped-margin", "random"])
def test_the_forget_request_is_clean(digits, digits_backdoor, strategy):
    x, y = digits.x_train, digits.y_train
    p = plant(x, y, _spec(strategy=strategy), 10, seed=0)
    req = select_request(digits_backdoor["badnets"], p, _spec(strategy=strategy), seed=0)
    assert len(req) == 40 and len(torch.unique(req)) == 40
    # no trigger (each image is the untouched original), true labels, no target-class image
    assert is_clean(req, p, x, y, target=0)
    assert torch.equal(p.x[req], x[req]) and torch.equal(p.y[req], y[req])
    assert not torch.isin(req, p.poisons).any() and (y[req] != 0).all()
    # the check itself bites: a poison in the request is caught
    assert not is_clean(torch.cat([req[:-1], p.poisons[:1]]), p, x, y, target=0)


def test_margin_request_is_the_surrogates_top_ranked(digits, digits_backdoor):
    x, y = digits.x_train, digits.y_train
    spec = _spec()
    p = plant(x, y, spec, 10, seed=0)
    surrogate = digits_backdoor["badnets"]
    req = select_request(surrogate, p, spec, seed=0)
    margin = target_margin(surrogate, x[p.clean_pool], 0)
    chosen = torch.isin(p.clean_pool, req)
    assert margin[chosen].min() >= margin[~chosen].max()
    # the margin is the target logit over the best other one: by hand for one image
    with torch.no_grad():
        logits = surrogate(x[p.clean_pool[:1]].float() / 255)[0]
    others = torch.cat([logits[1:]])
    assert float(margin[0]) == pytest.approx(float(logits[0] - others.max()), abs=1e-4)


def test_random_control_is_disjoint_and_seeded(digits, digits_backdoor):
    x, y = digits.x_train, digits.y_train
    spec = _spec()
    p = plant(x, y, spec, 10, seed=0)
    req = select_request(digits_backdoor["badnets"], p, spec, seed=0)
    a = random_request(p, len(req), seed=0, exclude=req)
    assert len(a) == len(req) and not torch.isin(a, req).any()
    assert torch.equal(a, random_request(p, len(req), seed=0, exclude=req))
    assert not torch.equal(a, random_request(p, len(req), seed=1, exclude=req))
    assert is_clean(a, p, x, y, target=0)


def test_bad_attack_settings_are_refused(digits):
    x, y = digits.x_train, digits.y_train
    with pytest.raises(DormantError, match="clean non-target images"):
        plant(x, y, _spec(request=10_000), 10, seed=0)
    with pytest.raises(DormantError, match="strategy"):
        _spec(strategy="pixels")
    with pytest.raises(DormantError, match="contribution"):
        _spec(contribution=1.5)
    with pytest.raises(DormantError, match="contribution holds only 4[0-9] images of class 1"):
        plant(x, y, _spec(poison=PoisonSpec(0, TRIGGER, per_class=500)), 10, seed=0)
