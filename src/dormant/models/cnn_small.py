"""Small CNN and MLP for 1-channel and small inputs (digits, MNIST, Fashion-MNIST)."""

from torch import nn

from dormant.models.registry import ModelSpec, register_model


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


@register_model("cnn-small")
def cnn_small(spec: ModelSpec) -> nn.Module:
    # two conv stages then a small head; the pooled grid adapts so 8x8 digits and 32x32 both fit
    grid = 4 if spec.image_size >= 16 else max(1, spec.image_size // 4)
    # 16/32 channels: enough to memorise MNIST-sized sets, and cheap enough on a CPU that
    # studies stay interactive (32/64 cost 2.2x the step time)
    return nn.Sequential(
        _block(spec.in_channels, 16),
        nn.MaxPool2d(2),
        _block(16, 32),
        nn.MaxPool2d(2),
        nn.AdaptiveAvgPool2d(grid),
        nn.Flatten(),
        nn.Linear(32 * grid * grid, 128),
        nn.ReLU(inplace=True),
        nn.Linear(128, spec.num_classes),
    )


@register_model("mlp")
def mlp(spec: ModelSpec) -> nn.Module:
    """The 64-128-128-10 MLP with which the relearning effect was first measured on digits."""
    d = spec.in_channels * spec.image_size * spec.image_size
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(d, 128),
        nn.ReLU(inplace=True),
        nn.Linear(128, 128),
        nn.ReLU(inplace=True),
        nn.Linear(128, spec.num_classes),
    )
