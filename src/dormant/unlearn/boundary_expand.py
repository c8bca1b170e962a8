from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING, ClassVar

from dormant.errors import DormantError
from dormant.unlearn.base import (
    BACKDOOR_DOC,
    Preset,
    StoppableHparams,
    Strength,
    hyperparameters,
    register_method,
    stop_when_forgotten,
)

if TYPE_CHECKING:
    import torch
    from torch import nn


@hyperparameters
class BoundaryExpandHparams(StoppableHparams):
    """Boundary Expanding: add a shadow (C+1)-th output, train every forget sample into it,
    then prune that output again (Chen et al. 2023).

    The classifier is the last ``nn.Linear`` in ``named_modules`` order; its shadow row gets
    nn.Linear's default init (U(+-1/sqrt(fan_in))) from a generator seeded by ``ctx.seed``.
    After training the shadow row is pruned, so the model keeps its C-way module structure and
    state_dict keys (SalUn's port omits this pruning). ``stop_acc`` judges the monitor ids on
    the first C logits, i.e. the model as it will be after pruning. Authors: SGD lr 1e-5,
    momentum 0.9, 10 epochs over D_f; the budget here follows the seed paper (Adam lr 1e-5,
    39,100 steps).
    """

    # the shadow class absorbs the forget set fast, as random_label
    strength: ClassVar[Strength | None] = Strength("lr", (0.03, 0.1, 0.3, 1.0))


@functools.cache
def _first_logits() -> type:
    """The wrapper class (made on first use: this module loads without torch)."""
    from torch import nn

    class FirstLogits(nn.Module):
        """The wrapped model with its logits cut to the first ``n``: the pruned model's view."""

        def __init__(self, model: nn.Module, n: int) -> None:
            super().__init__()
            self.model, self.n = model, n

        def forward(self, x):
            return self.model(x)[:, : self.n]

    return FirstLogits


def last_linear(model: nn.Module) -> tuple[str, nn.Linear]:
    from torch import nn

    found = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not found:
        raise DormantError("boundary_expand needs a model whose classifier is an nn.Linear")
    return found[-1]


def _put(model: nn.Module, name: str, module: nn.Module) -> nn.Module:
    """``model`` with submodule ``name`` replaced; the module itself when ``name`` is ''."""
    if not name:
        return module
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, module)
    return model


def _linear_from(old: nn.Linear, weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    import torch
    from torch import nn

    new = nn.utils.skip_init(nn.Linear, old.in_features, weight.shape[0], bias=bias is not None,
                             device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias)
    new.requires_grad_(old.weight.requires_grad)
    return new


def widen(head: nn.Linear, generator: torch.Generator) -> nn.Linear:
    """``head`` with one extra output row, default-initialised from ``generator``."""
    import torch

    w = head.weight.detach()
    bound = 1.0 / math.sqrt(head.in_features)
    draw = torch.rand(1 + head.in_features, generator=generator).to(w) * 2 * bound - bound
    weight = torch.cat([w, draw[None, :-1]])
    bias = None if head.bias is None else torch.cat([head.bias.detach(), draw[-1:]])
    return _linear_from(head, weight, bias)


@register_method("boundary_expand", BoundaryExpandHparams, presets={
    "backdoor": Preset({"steps": 20, "lr": 1e-4}, doc=BACKDOOR_DOC),
})
def boundary_expand(model, data, hp, ctx):
    import torch
    import torch.nn.functional as F

    from dormant.engine import BatchStream, forward, train_loop

    recipe = hp.recipe(ctx.recipe)
    g = torch.Generator().manual_seed(ctx.seed)
    c = data.num_classes
    name, head = last_linear(model)
    if head.out_features != c:
        raise DormantError(f"boundary_expand: the last nn.Linear {name!r} has "
                           f"{head.out_features} outputs, expected {c} classes")
    model = _put(model, name, widen(head, g))
    forget = BatchStream(data.forget, recipe.batch_size, g)
    shadow = torch.full((recipe.batch_size,), c, dtype=torch.long, device=data.y.device)

    def loss(_step):
        b = forget()
        return F.cross_entropy(forward(model, data.x, b, recipe, g), shadow[: len(b)])

    stop = stop_when_forgotten(data, hp)
    hook = None if stop is None else (lambda done, m: stop(done, _first_logits()(m, c)))
    train_loop(model, recipe, loss, hook=hook, progress=ctx.progress, label="boundary_expand")
    wide = model.get_submodule(name) if name else model
    pruned = _linear_from(wide, wide.weight.detach()[:c],
                          None if wide.bias is None else wide.bias.detach()[:c])
    return _put(model, name, pruned)
