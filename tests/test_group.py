"""Many small models in one pass (issue 25): each model of a batched group ends as the same
model trained alone by ``fit``, within float tolerance, for an MLP and a BatchNorm CNN
(running statistics included); a model vmap cannot batch falls back, with one warning."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from dormant.engine import Recipe, fit
from dormant.engine.group import fit_group
from dormant.models import ModelSpec, create_model

TOL = 2e-4
"""Float32, 40 Adam steps: only summation order differs between batched and alone."""


def _ids(n_train: int, k: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randperm(n_train, generator=g)[:300] for _ in range(k)]


@pytest.mark.parametrize("arch,augment", [("mlp", "none"), ("cnn-small", "crop")])
def test_each_model_of_a_group_matches_it_trained_alone(digits, arch, augment):
    x, y = digits.x_train, digits.y_train
    recipe = Recipe(steps=40, lr=1e-3, batch_size=32, augment=augment, pad=1)
    ids = _ids(len(y), 3)
    spec = ModelSpec(arch, 1, 10, 8)
    alone = [create_model(spec, seed=s) for s in range(3)]
    for m, i, s in zip(alone, ids, range(3), strict=True):
        fit(m, x, y, i, recipe, generator=torch.Generator().manual_seed(100 + s))
    group = [create_model(spec, seed=s) for s in range(3)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # it must not fall back
        fit_group(group, x, y, ids, recipe, batched=True,
                  generators=[torch.Generator().manual_seed(100 + s) for s in range(3)])
    for a, b in zip(alone, group, strict=True):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys()
        for k in sa:
            assert torch.allclose(sa[k].float(), sb[k].float(), atol=TOL, rtol=TOL), k
    if arch == "cnn-small":  # BatchNorm's running statistics moved, per model
        means = [next(v for k, v in m.state_dict().items() if k.endswith("running_mean"))
                 for m in group]
        assert not torch.allclose(means[0], means[1])
        assert all(float(v.abs().sum()) > 0 for v in means)
    # the models differ from each other: each trained on its own ids
    w = [next(m.parameters()).detach() for m in group]
    assert not torch.allclose(w[0], w[1])


class _NoBatchingRule(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        if float(x.sum()) > 1e30:  # data-dependent control flow: vmap cannot batch it
            return self.fc(x.flatten(1)) * 2
        return self.fc(x.flatten(1))


def test_a_model_vmap_cannot_batch_falls_back_with_one_warning(digits):
    x, y = digits.x_train, digits.y_train
    recipe = Recipe(steps=5, lr=1e-3, batch_size=16, augment="none")
    models = [_NoBatchingRule() for _ in range(2)]
    with pytest.warns(UserWarning, match="one at a time: vmap cannot batch it") as caught:
        out = fit_group(models, x, y, _ids(len(y), 2), recipe,
                        generators=[torch.Generator().manual_seed(s) for s in range(2)])
    assert len(caught) == 1 and [r.steps for r in out] == [5, 5]
