"""Hidden states of a model by module name, and forward hooks that record them.

A layer name is a module name from ``model.named_modules()`` (its output is recorded) or
``"<module>:input"`` (the module's first input is recorded). The suffix exists because the
CIFAR ResNet computes its stem, ``relu(bn1(conv1(x)))``, inline: the stem's output is only
visible as the input of ``layers``.

Which modules count as hidden states (``hidden_layers``), in forward order:

- CIFAR ResNet (``resnet18``/``resnet34``): the stem, then every BasicBlock. This is the seed
  paper's ``output_hidden_states`` list without its final entry (the logits), so the seed's
  hidden-state index ``i`` is ``hidden_layers(model)[i]``.
- ``nn.Sequential`` (``mlp``, ``cnn-small``): every top-level child, except the last (the
  logits), that is or contains an activation function; i.e. the output after each
  nonlinearity or nonlinear block, before any pooling that follows it.
- timm models: the modules their own ``feature_info`` names, in its order (the stem's and
  every stage's output for CNNs, every transformer block for ViTs).
- Anything else: every residual block (modules named ``BasicBlock`` or ``Bottleneck``, as
  in torchvision's ResNets); a model with none of these needs its layers named explicitly.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from dormant.errors import DormantError
from dormant.models.resnet_cifar import ResNet

_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Mish, nn.Tanh,
                nn.Sigmoid, nn.Softplus, nn.Hardswish, nn.PReLU)
_BLOCKS = ("BasicBlock", "Bottleneck")
INPUT = ":input"


def _nonlinear(module: nn.Module) -> bool:
    return any(isinstance(m, _ACTIVATIONS) for m in module.modules())


def hidden_layers(model: nn.Module) -> list[str]:
    """Names of the modules whose outputs are the model's hidden states, in forward order
    (the rule per architecture is in this module's docstring)."""
    if isinstance(model, ResNet):
        return ["layers" + INPUT] + [f"layers.{i}" for i in range(len(model.layers))]
    info = getattr(model, "feature_info", None)
    if isinstance(model, nn.Sequential):
        children = list(model.named_children())[:-1]
        names = [name for name, child in children if _nonlinear(child)]
    elif isinstance(info, list) and all(isinstance(f, dict) for f in info):
        modules = dict(model.named_modules())
        names = [f["module"] for f in info if f.get("module") in modules]
    else:
        names = [name for name, m in model.named_modules() if type(m).__name__ in _BLOCKS]
    if not names:
        raise DormantError(
            f"cannot tell the hidden layers of a {type(model).__name__}; pass layers=(...) "
            "with module names from model.named_modules()"
        )
    return names


def default_layers(model: nn.Module) -> list[str]:
    """The layers representation-based methods (Circuit Breakers, TAR) compare by default.

    The seed paper uses hidden-state indices {4, 7} of ResNet-18's nine (stem + 8 blocks):
    the end of layer2 and the first block of layer4, i.e. relative depths 1/2 and 7/8 of the
    last index m = 8. Other models get the same relative depths, ``m // 2`` and
    ``ceil(7m / 8)``, which stay distinct whenever there are two hidden states or more
    (ResNet-34: 8 and 14; cnn-small: its second conv block and its hidden FC layer; mlp: both
    hidden layers).
    """
    names = hidden_layers(model)
    m = len(names) - 1
    picks = sorted({m // 2, math.ceil(7 * m / 8)})
    return [names[i] for i in picks]


@contextmanager
def capture(model: nn.Module, names: Sequence[str]) -> Iterator[dict[str, torch.Tensor]]:
    """Record the named hidden states of every forward pass run inside the block.

    Yields a dict that each forward fills, ``name -> tensor`` (the latest pass wins); the
    tensors stay in the autograd graph, so losses on them train the model. The hooks are
    removed on exit, even after an error.
    """
    modules = dict(model.named_modules())
    feats: dict[str, torch.Tensor] = {}
    handles = []

    def keep_output(name):
        return lambda _m, _args, out: feats.__setitem__(name, out)

    def keep_input(name):
        return lambda _m, args: feats.__setitem__(name, args[0])

    try:
        for name in names:
            target = name.removesuffix(INPUT)
            if target not in modules:
                raise DormantError(
                    f"the model has no module {target!r}; name modules from "
                    "model.named_modules(), optionally with the suffix ':input'"
                )
            module = modules[target]
            handles.append(module.register_forward_pre_hook(keep_input(name))
                           if name.endswith(INPUT) else
                           module.register_forward_hook(keep_output(name)))
        yield feats
    finally:
        for h in handles:
            h.remove()


def forward_with(
    model: nn.Module, x: torch.Tensor, names: Sequence[str]
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``model(x)`` and the named hidden states of that pass, in ``names`` order."""
    with capture(model, names) as feats:
        out = model(x)
    return out, [feats[n] for n in names]
