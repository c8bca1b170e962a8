"""The seed paper's perturb-then-fine-tune shape shared by weight attenuation, dropout and
distortion (Siddiqui et al. 2025): one in-place perturbation of every ``model.parameters()``
entry, then cross-entropy fine-tuning on the retain set alone.

It also says which scale each parameter lives on (``noise_scales``), so that a noise level
can be a multiple of each tensor's RMS and mean the same on a 72k-weight CNN and an
11M-weight ResNet."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from dormant.unlearn.base import StepHparams, UnlearnContext, UnlearnData, noise_generator

if TYPE_CHECKING:
    import torch
    from torch import nn

Perturbation = Callable[["torch.Tensor", "torch.Generator", "Scale"], "torch.Tensor"]
"""``(parameter, generator, scale) -> new value`` of the same shape; random draws use
``generator``; ``scale`` is the parameter's :class:`Scale`, for perturbations relative to it."""

def perturb_parameters(model: nn.Module, fn: Perturbation, generator: torch.Generator) -> None:
    """Replace every parameter by ``fn(parameter, generator, scale)``. Buffers (BatchNorm
    running statistics) are left alone, as in the seed's ``model_utils``."""
    import torch

    scales = noise_scales(model)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(fn(p, generator, scales[name]))


def draw(like: torch.Tensor, sampler: Callable, generator: torch.Generator) -> torch.Tensor:
    """``sampler(shape, generator=...)`` drawn on the CPU generator, then moved to ``like``'s
    device and dtype, so the noise does not depend on the device."""
    return sampler(like.shape, generator=generator).to(like.device, like.dtype)


@dataclass(frozen=True)
class Scale:
    """The scale one parameter's values live on.

    ``kind``:

    - ``"filter"``: a weight whose output channels a normalisation layer normalises next.
      Each output channel is then invariant to its filter's length, so what noise does to it
      depends only on the noise relative to *that filter's* RMS; ``rms`` has shape
      ``[out, 1, ...]``. Trained filters of one tensor differ in length (some shrink to
      nearly nothing), and one tensor-wide scale would scramble the short ones and barely
      touch the long ones.
    - ``"tensor"``: any other weight or bias; ``rms`` is the tensor's RMS (a 0-d tensor).
    - ``"norm"``: a normalisation layer's own affine parameters. They multiply or shift
      activations that the layer has normalised to unit scale, so their natural unit is 1 on
      any model and an absolute noise level already transfers; ``rms`` is ``None``.
    """

    kind: Literal["filter", "tensor", "norm"]
    rms: torch.Tensor | None


def _normalises_next(model: nn.Module) -> tuple[set[int], set[int]]:
    """(ids of weights whose output a normalisation layer normalises next, ids of the
    normalisation layers' own parameters), read from module registration order: a conv or
    linear layer counts when the next module that owns parameters is a normalisation layer
    over as many features as it has outputs (ResNet and cnn-small blocks, torchvision's
    ResNets). A model whose modules are registered out of forward order is misread as
    "tensor" scale, which is the safe side (one RMS per tensor)."""
    from torch import nn

    norm_layers = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
    owners = [m for m in model.modules() if any(True for _ in m.parameters(recurse=False))]
    followed, norm = set(), set()
    for m, nxt in zip(owners, owners[1:] + [None], strict=True):
        if isinstance(m, norm_layers):
            norm.update(id(p) for p in m.parameters(recurse=False))
            continue
        w = getattr(m, "weight", None)
        if (w is not None and w.ndim >= 2 and isinstance(nxt, nn.modules.batchnorm._NormBase)
                and nxt.num_features == w.shape[0]):
            followed.add(id(w))
    return followed, norm


def noise_scales(model: nn.Module) -> dict[str, Scale]:
    """Every parameter's :class:`Scale`, by name, in ``model.parameters()`` order."""
    followed, norm = _normalises_next(model)
    out = {}
    for name, p in model.named_parameters():
        w = p.detach().float()  # a scale, not a graph
        if id(p) in norm:
            out[name] = Scale("norm", None)
        elif id(p) in followed:
            dims = tuple(range(1, p.ndim))
            out[name] = Scale("filter", w.pow(2).mean(dims, keepdim=True).sqrt())
        else:
            out[name] = Scale("tensor", w.pow(2).mean().sqrt())
    return out


def perturb_then_finetune(model: nn.Module, data: UnlearnData, hp: StepHparams,
                          ctx: UnlearnContext, fn: Perturbation, label: str) -> nn.Module:
    # separate generators: the fine-tune then draws exactly the batches `finetune` would with
    # the same seed, so a comparison isolates the perturbation
    import torch

    from dormant.engine import fit

    perturb_parameters(model, fn, noise_generator(ctx.seed))
    fit(model, data.x, data.y, data.retain, hp.recipe(ctx.recipe),
        generator=torch.Generator().manual_seed(ctx.seed), progress=ctx.progress, label=label)
    return model
