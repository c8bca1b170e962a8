"""Model registry. Importing this package registers every built-in architecture."""

from dormant.models import (  # noqa: F401
    cnn_small,
    ensemble,
    resnet_cifar,
    timm_models,
    torchvision_models,
)
from dormant.models.registry import (
    ModelSpec,
    available_models,
    create_model,
    register_model,
)

__all__ = ["ModelSpec", "available_models", "create_model", "register_model"]

from dormant.models.features import capture, default_layers, forward_with, hidden_layers  # noqa: E402

__all__ += ["capture", "default_layers", "forward_with", "hidden_layers"]
