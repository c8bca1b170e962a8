"""Model registry. Importing this package registers every built-in architecture."""

from dormant.models import cnn_small, ensemble, resnet_cifar, torchvision_models  # noqa: F401
from dormant.models.registry import (
    ModelSpec,
    available_models,
    create_model,
    register_model,
)

__all__ = ["ModelSpec", "available_models", "create_model", "register_model"]

from dormant.models.features import capture, default_layers, forward_with, hidden_layers  # noqa: E402

__all__ += ["capture", "default_layers", "forward_with", "hidden_layers"]
