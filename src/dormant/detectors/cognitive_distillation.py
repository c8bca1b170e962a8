"""Cognitive Distillation as a per-sample detector (Huang et al., ICLR 2023): the smallest
input pattern that keeps the model's output; a backdoored image keeps it with a tiny mask
(the trigger), so a small mask L1 norm is the suspect sign. The authors' detection
(HanxunH/CognitiveDistillation, ``detect_analysis``) fits the mean and standard deviation of
the norms on the inspected training images themselves and flags an image more than
``threshold`` (1) standard deviations below the mean; so does this detector, on the sample."""

from __future__ import annotations

import torch
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
    backdoor study does), with the authors' flag ``threshold`` of 1 standard deviation."""

    threshold: float = 1.0


@register_detector("cd", CDDetectorConfig, label="Cognitive Distillation",
                   rule="mask L1 norm more than 1 sd below the sample's mean "
                        "(Huang et al. 2023)")
def cognitive_distillation(cfg: CDDetectorConfig, model: nn.Module, x: torch.Tensor,
                           y: torch.Tensor, reference: torch.Tensor, seed: int) -> Detection:
    h, w = x.shape[2:]
    run = cfg.model_copy(update={"gamma": cfg.gamma * REF_PIXELS / (h * w)})
    s = cd_scores(distil_masks(model, x, None, run, seed=seed))
    if len(s) < 2:
        return Detection(-s, torch.zeros(len(s), dtype=torch.bool))
    return Detection(-s, cd_flags(s, s, cfg.threshold))
