from __future__ import annotations

import copy
from typing import TYPE_CHECKING, ClassVar

from dormant.unlearn.base import (
    NonNegative,
    StoppableHparams,
    Strength,
    UnlearnContext,
    hyperparameters,
    register_method,
    stop_when_forgotten,
)

if TYPE_CHECKING:
    import torch
    from torch import nn


@hyperparameters
class CircuitBreakersHparams(StoppableHparams):
    """Circuit Breakers (representation rerouting): push forget-set hidden states orthogonal
    to the pretrained model's while holding retain-set ones in place (Zou et al. 2024, as
    adapted to vision in Siddiqui et al. 2025, seed `circuit_breakers`).

    L_r = mean over layers of MSE(h(x_r; theta), h(x_r; theta_pre)); L_f = mean over layers
    of mean_batch ReLU(cos(flat h(x_f; theta), flat h(x_f; theta_pre))); at step t of T,
    L = c_r L_r + c_u L_f with c_r = alpha (t+1)/T and c_u = alpha (1 - (t+1)/T) (the seed's
    "complete" schedule; the LLM paper stretches it over 2T). ``alpha = 1`` and layers {4, 7}
    of ResNet-18 (``default_layers``; ``()`` means those) are the seed's; so is the optimiser
    (a fresh Adam, lr 1e-5, wd 0, 39,100 steps) and running theta_pre in train mode.
    """

    # a retain term holds the model, so the grid spans both sides of the profile's rate
    strength: ClassVar[Strength | None] = Strength("lr", (0.1, 0.3, 1.0, 3.0))

    alpha: NonNegative = 1.0
    layers: tuple[str, ...] = ()


def chosen_layers(layers, model: nn.Module) -> list[str]:
    """The ``layers`` hyper-parameter as names: a sequence, a comma-separated string (as a
    command line gives it), or empty for ``default_layers(model)``."""
    from dormant.models.features import default_layers

    if isinstance(layers, str):
        layers = [name.strip() for name in layers.split(",") if name.strip()]
    return list(layers) or default_layers(model)


def frozen_anchor(ctx: UnlearnContext) -> nn.Module:
    """A private, gradient-free copy of theta_pre in train mode: the seed compares hidden
    states under batch statistics on both sides, and the copy keeps ``ctx.pretrained``'s own
    BatchNorm buffers untouched."""
    return copy.deepcopy(ctx.pretrained).requires_grad_(False).train()


def layer_mse(h: list[torch.Tensor], h0: list[torch.Tensor]) -> torch.Tensor:
    """Mean over layers of the element-mean squared error (L_r; TAR's representation term)."""
    import torch
    import torch.nn.functional as F

    return torch.stack([F.mse_loss(a.float(), b.float()) for a, b in zip(h, h0, strict=True)]
                       ).mean()


def layer_cosine(h: list[torch.Tensor], h0: list[torch.Tensor]) -> torch.Tensor:
    """Mean over layers of mean_batch ReLU(cos) between flattened hidden states (L_f)."""
    import torch
    import torch.nn.functional as F

    cos = [F.relu(F.cosine_similarity(a.flatten(1).float(), b.flatten(1).float(), dim=-1)).mean()
           for a, b in zip(h, h0, strict=True)]
    return torch.stack(cos).mean()


def representation_setup(model, data, hp, ctx):
    """What Circuit Breakers and TAR share: the recipe, a seeded generator, retain and forget
    batch streams, the hidden layers to compare, and a frozen theta_pre to compare against."""
    import torch

    from dormant.engine import BatchStream

    recipe = hp.recipe(ctx.recipe)
    g = torch.Generator().manual_seed(ctx.seed)
    retain = BatchStream(data.retain, recipe.batch_size, g)
    forget = BatchStream(data.forget, recipe.batch_size, g)
    return recipe, g, retain, forget, chosen_layers(hp.layers, model), frozen_anchor(ctx)


@register_method("circuit_breakers", CircuitBreakersHparams)
def circuit_breakers(model, data, hp, ctx):
    import torch

    from dormant.engine import to_float, train_loop
    from dormant.engine.augment import augment
    from dormant.models.features import forward_with

    recipe, g, retain, forget, layers, anchor = representation_setup(model, data, hp, ctx)

    def paired(ids):
        # both models see the same augmented images
        x = augment(to_float(data.x[ids]), recipe.augment, recipe.pad, g)
        with torch.no_grad():
            h0 = forward_with(anchor, x, layers)[1]
        return forward_with(model, x, layers)[1], h0

    def loss(step):
        frac = (step + 1) / recipe.steps
        l_r = layer_mse(*paired(retain()))
        l_f = layer_cosine(*paired(forget()))
        return hp.alpha * frac * l_r + hp.alpha * (1 - frac) * l_f

    train_loop(model, recipe, loss, hook=stop_when_forgotten(data, hp),
               progress=ctx.progress, label="circuit_breakers")
    return model
