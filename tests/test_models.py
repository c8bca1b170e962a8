"""The model registry: shapes, reproducible initialisation, the CIFAR ResNet form."""

from __future__ import annotations

import pytest
import torch

from dormant.errors import DormantError
from dormant.models import ModelSpec, available_models, create_model


@pytest.mark.parametrize("name,c,size", [("cnn-small", 1, 8), ("cnn-small", 1, 28),
                                         ("cnn-small", 3, 32), ("mlp", 1, 8),
                                         ("resnet18", 3, 32), ("resnet34", 3, 32),
                                         ("torchvision:resnet18", 1, 32)])
def test_output_shape(name, c, size):
    model = create_model(ModelSpec(name, c, 7, size), seed=0).eval()
    with torch.no_grad():
        assert model(torch.rand(2, c, size, size)).shape == (2, 7)


def test_cifar_resnet_form_and_sizes():
    r18 = create_model(ModelSpec("resnet18", 3, 10, 32))
    assert r18.conv1.kernel_size == (3, 3) and r18.conv1.stride == (1, 1)
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in r18.modules())
    n18 = sum(p.numel() for p in r18.parameters())
    n34 = sum(p.numel() for p in create_model(ModelSpec("resnet34", 3, 10, 32)).parameters())
    assert 11.1e6 < n18 < 11.2e6 and 21.2e6 < n34 < 21.4e6  # the usual CIFAR ResNet counts


def test_seeded_init_is_reproducible():
    spec = ModelSpec("cnn-small", 1, 10, 28)
    a, b, c = (create_model(spec, seed=s) for s in (1, 1, 2))
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters(), strict=True))
    assert not torch.equal(next(a.parameters()), next(c.parameters()))


def test_unknown_models_are_refused():
    assert {"cnn-small", "mlp", "resnet18", "resnet34"} <= set(available_models())
    with pytest.raises(DormantError, match="unknown model 'nope'"):
        create_model(ModelSpec("nope", 1, 10, 8))
    with pytest.raises(DormantError, match="unknown torchvision model"):
        create_model(ModelSpec("torchvision:nope", 3, 10, 32))
