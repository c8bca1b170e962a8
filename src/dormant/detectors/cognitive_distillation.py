"""Cognitive Distillation as a per-sample detector (Huang et al., ICLR 2023): the smallest
input pattern that keeps the model's output; a backdoored image keeps it with a tiny mask
(the trigger), so a small mask L1 norm is the suspect sign. The paper's rule flags an image
whose norm lies more than ``threshold`` standard deviations below the mean of clean
reference images (its ``predict``, threshold 1)."""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from dormant.defenses.cognitive_distillation import (
    REF_PIXELS,
    CognitiveDistillationConfig,
    cd_flags,
    cd_scores,
    distil_masks,
)
from dormant.detectors.registry import Detection, register_detector
from dormant.settings import one_line


@one_line("cognitive distillation detector")
class CDDetectorConfig(CognitiveDistillationConfig):
    """The defense's optimisation (its defaults; ``gamma`` scaled to the image size as the
    backdoor study does), with the paper's flag ``threshold`` of 1 standard deviation and
    ``images`` clean reference images to estimate the mean and spread on."""

    threshold: float = 1.0
    images: int | None = Field(200, ge=2)


@register_detector("cd", CDDetectorConfig, label="Cognitive Distillation",
                   rule="mask L1 norm more than 1 sd below the clean reference mean "
                        "(Huang et al. 2023)")
def cognitive_distillation(cfg: CDDetectorConfig, model: nn.Module, x: torch.Tensor,
                           y: torch.Tensor, reference: torch.Tensor, seed: int) -> Detection:
    h, w = x.shape[2:]
    run = cfg.model_copy(update={"gamma": cfg.gamma * REF_PIXELS / (h * w)})
    ref = reference[: cfg.images]
    masks = distil_masks(model, torch.cat([ref, x.to(ref.device)]), None, run, seed=seed)
    s = cd_scores(masks)
    ref_s, own = s[: len(ref)], s[len(ref):]
    return Detection(-own, cd_flags(ref_s, own, cfg.threshold))
