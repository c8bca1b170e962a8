"""A SISA ensemble as one ``nn.Module``: S member models whose outputs are aggregated, so every
check, attack and defence that takes a model takes it unchanged.

Its architecture name is ``sisa:<S>:<aggregate>:<member>`` (``sisa:5:mean:cnn-small``), built
through the registry like any other model, so checkpoints, the model store and the cache
load it from the sidecar's spec.

The output is a log-probability, so ``argmax``, cross-entropy and every attack read it as
logits:

- ``mean``: the log of the members' mean softmax. It is differentiable, so fine-tuning the
  ensemble (the relearning attack) sends every member the gradient of the same batch,
  weighted by each member's share of the aggregate.
- ``vote``: the majority vote of the members' labels (Bourtoule et al. 2021, section V), in
  eval mode; ties go to the higher mean probability. In train mode it is ``mean``: a vote has
  no gradient, and an attack needs one.
"""

from __future__ import annotations

import torch
from torch import nn

from dormant.errors import DormantError
from dormant.models.registry import ModelSpec, create_model, register_model

AGGREGATES = ("mean", "vote")
PREFIX = "sisa"


def ensemble_name(member: str, shards: int, aggregate: str) -> str:
    return f"{PREFIX}:{shards}:{aggregate}:{member}"


def parse_name(name: str) -> tuple[int, str, str] | None:
    """``(shards, aggregate, member)`` of an ensemble's name; None for any other model."""
    head, _, rest = name.partition(":")
    if head != PREFIX:
        return None
    shards, _, rest = rest.partition(":")
    aggregate, _, member = rest.partition(":")
    if not shards.isdigit() or int(shards) < 1 or aggregate not in AGGREGATES or not member:
        raise DormantError(f"model {name!r} is not a SISA ensemble name; write "
                           "sisa:<shards>:<mean|vote>:<member>, e.g. sisa:5:mean:cnn-small")
    return int(shards), aggregate, member


def member_name(name: str) -> str:
    """The architecture a model's members have: itself for a plain model."""
    parsed = parse_name(name)
    return name if parsed is None else parsed[2]


class Ensemble(nn.Module):
    def __init__(self, members: list[nn.Module], aggregate: str) -> None:
        super().__init__()
        if aggregate not in AGGREGATES:
            raise DormantError(f"aggregate {aggregate!r}: choose one of {', '.join(AGGREGATES)}")
        self.shards = nn.ModuleList(members)
        self.aggregate = aggregate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = torch.stack([m(x).float().softmax(1) for m in self.shards])
        mean = probs.mean(0)
        if self.aggregate == "mean" or self.training:
            return mean.clamp_min(1e-12).log()
        votes = torch.zeros_like(mean).scatter_add_(
            1, probs.argmax(2).T, torch.ones(mean.shape[0], len(self.shards), device=x.device))
        # a vote share dominates; the mean probability (< 1) only breaks ties
        return ((votes + mean) / (len(self.shards) + 1)).clamp_min(1e-12).log()


def spec_of(model: nn.Module, spec: ModelSpec) -> ModelSpec:
    """The spec a checkpoint of ``model`` records: ``spec`` itself, or for an ensemble whose
    caller named its members' architecture, the ensemble's name over it."""
    if not isinstance(model, Ensemble) or parse_name(spec.name) is not None:
        return spec
    name = ensemble_name(spec.name, len(model.shards), model.aggregate)
    return ModelSpec(name, spec.in_channels, spec.num_classes, spec.image_size)


@register_model(PREFIX, prefix=True)
def sisa(spec: ModelSpec) -> nn.Module:
    shards, aggregate, member = parse_name(spec.name)
    one = ModelSpec(member, spec.in_channels, spec.num_classes, spec.image_size)
    return Ensemble([create_model(one) for _ in range(shards)], aggregate)
