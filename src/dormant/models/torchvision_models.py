"""Any torchvision classifier by name: ``torchvision:<name>`` (random init, no download)."""

from torch import nn

from dormant.errors import DormantError
from dormant.models.registry import ModelSpec, register_model


class _GreyToRGB(nn.Module):
    """torchvision models expect 3 channels; repeat a grey channel rather than edit the stem."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x.expand(-1, 3, -1, -1))


@register_model("torchvision", prefix=True)
def torchvision_model(spec: ModelSpec) -> nn.Module:
    import torchvision

    name = spec.name.split(":", 1)[1]
    if name not in torchvision.models.list_models(module=torchvision.models):
        raise DormantError(
            f"unknown torchvision model {name!r}; see torchvision.models.list_models()"
        )
    net = torchvision.models.get_model(name, weights=None, num_classes=spec.num_classes)
    return _GreyToRGB(net) if spec.in_channels == 1 else net
