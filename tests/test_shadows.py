"""Shared shadow models (issue 25): a second audit on the same pool trains no new shadow (a
spy on training says so), and the shadows are what their keys say: each trained on its own
half of the pool."""

from __future__ import annotations

import numpy as np
import torch

from dormant.engine import Recipe, fit
from dormant.experiments import shadows as sh
from dormant.metrics.lira import membership
from dormant.models import ModelSpec, create_model
from dormant.store import ModelCache


def test_a_second_method_on_the_same_pool_trains_no_new_shadow(digits, tmp_path,
                                                              monkeypatch):
    x, y = digits.x_train, digits.y_train
    spec = ModelSpec("mlp", 1, 10, 8)
    recipe = Recipe(steps=30, lr=1e-3, batch_size=32, augment="none")
    pool = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))[:200]
    target_in = np.arange(200) < 100
    trained: list[int] = []
    real = sh.fit_group

    def spy(models, *args, **kwargs):
        trained.append(len(models))
        return real(models, *args, **kwargs)

    monkeypatch.setattr(sh, "fit_group", spy)
    cache = ModelCache(tmp_path / "cache")
    audits = []
    for method_seed in (1, 2):  # two "methods": two different unlearned targets
        target = create_model(spec, seed=method_seed)
        fit(target, x, y, pool[:100], recipe, generator=torch.Generator().manual_seed(7))
        audits.append(sh.membership_audit(
            target, x, y, pool, target_in, spec, recipe, shadows=4, seed=3, cache=cache,
            fingerprint=digits.fingerprint))
    assert trained == [4]  # one batched group of 4, for the first audit only
    assert len([b for b in cache.build_log() if b["kind"] == "shadow"]) == 4
    assert audits[0]["shadows"] == 4 and audits[0]["global_variance"]
    assert audits[0]["lira_online"]["members"] == 100
    # the cached shadows are the models their keys name: the same ids and seed rebuild them
    keep = membership(4, 200, 3)
    again = create_model(spec, seed=sh.shadow_seed(3, 0))
    fit(again, x, y, pool[torch.as_tensor(keep[0])], recipe,
        generator=torch.Generator().manual_seed(sh.shadow_seed(3, 0)))
    cached = sh.train_shadows(x, y, pool, keep, spec, recipe, seed=3, cache=cache,
                              fingerprint=digits.fingerprint)[0]
    for k, v in again.state_dict().items():
        assert torch.allclose(v, cached.state_dict()[k], atol=1e-5), k
    assert trained == [4]
