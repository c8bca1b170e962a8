"""Cognitive Distillation (Huang et al. 2023, ICLR): for every input, find the smallest mask
that keeps the model's logits unchanged when everything outside it is painted over; a backdoored
input needs only a tiny mask that covers its trigger, so a small mask is suspicious.

Every image of a batch has its own mask, its loss depends on nothing else in the batch, and Adam
is element-wise: a batch gives each image what a run of its own gives, up to the random fill
(and Adam's eps, since the batch mean scales each image's gradient by 1/b).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field

from dormant.defenses.registry import Control, register_defense, span
from dormant.errors import DormantError
from dormant.settings import Settings, one_line

if TYPE_CHECKING:
    import torch
    from torch import nn

    from dormant.engine import Progress

# keeps every mask value representable strictly inside (0, 1) in float32: (tanh(w) + 1) / 2
# rounds to exactly 0 or 1 once |w| > ~9, which 100 Adam steps of lr 0.1 can reach
EPS = 1e-6
# the paper's gamma (its alpha) on CIFAR-10 and GTSRB, whose images are 32 x 32
REF_GAMMA, REF_PIXELS = 0.01, 32 * 32


@one_line("cognitive distillation")
class CognitiveDistillationConfig(Settings):
    """Defaults from the authors' code (HanxunH/CognitiveDistillation) and BackdoorBench's CD
    config: 100 Adam steps at lr 0.1 with betas (0.1, 0.1), L1 mask norm (``p`` = 1) weighted by
    ``gamma`` = 0.01 (the paper's alpha), total-variation weight ``beta`` = 10 (the README's and
    BackdoorBench's value; the authors' class defaults to 1.0), batches of 256 images.

    ``images``: how many inputs the backdoor study scores for its detection AUROC (half
    clean, half triggered; ``None``: every evaluation image it has). :func:`distil_masks`
    takes its inputs from the caller. The study scales ``gamma`` to its image size as
    :meth:`for_resolution` does (``gamma`` is then the value at 32 x 32)."""

    steps: int = Field(100, ge=1)
    lr: float = Field(0.1, gt=0)
    betas: tuple[Annotated[float, Field(ge=0.0, lt=1.0)], Annotated[float, Field(ge=0.0, lt=1.0)]] \
        = (0.1, 0.1)
    gamma: float = Field(0.01, ge=0)
    beta: float = Field(10.0, ge=0)
    p: Literal[1, 2] = 1
    batch_size: int = Field(256, ge=1)
    images: int | None = Field(None, ge=2)

    @classmethod
    def for_resolution(cls, height: int, width: int, **overrides) -> CognitiveDistillationConfig:
        """The defaults with ``gamma`` set for ``height`` x ``width`` images: the mask's L1 norm
        grows with the pixel count, so gamma is the paper's CIFAR-10 and GTSRB value (0.01 on
        32 x 32 images) scaled by 32^2 / (height * width), which keeps the penalty's weight
        against the fidelity term what it was there (MNIST 28 x 28: 0.0131; 8 x 8 digits: 0.16).
        The paper runs 100 steps on every dataset; ``steps`` stays at that."""
        if height < 1 or width < 1:
            raise DormantError(f"cognitive distillation: image size must be positive, got "
                               f"{height}x{width}")
        return cls(**{"gamma": REF_GAMMA * REF_PIXELS / (height * width), **overrides})


PRESETS = {
    "paper": CognitiveDistillationConfig(),
    "cpu": CognitiveDistillationConfig(images=200),
}
"""``cpu``: the paper's optimisation on 200 inputs (100 clean, 100 triggered) per scan, what
the backdoor study scores unless told otherwise (configs/cifar10-backdoor.yaml: 100)."""


def _squash(w: torch.Tensor) -> torch.Tensor:
    # (tanh(w) + 1) / 2 == sigmoid(2w), squeezed by EPS so float32 never reaches 0 or 1
    import torch

    return EPS + (1 - 2 * EPS) * torch.sigmoid(2 * w)


def _fill(g: torch.Generator, b: int, c: int, device: torch.device) -> torch.Tensor:
    """One uniform colour per image and channel, the paint outside the mask."""
    import torch

    return torch.rand(b, c, 1, 1, generator=g).to(device)


def _tv(m: torch.Tensor) -> torch.Tensor:
    """Per-image total variation, squared differences over the mask's C*H*W entries."""
    _, c, h, w = m.shape
    dh = (m[:, :, 1:, :] - m[:, :, :-1, :]).pow(2).flatten(1).sum(1)
    dw = (m[:, :, :, 1:] - m[:, :, :, :-1]).pow(2).flatten(1).sum(1)
    return (dh + dw) / (c * h * w)


def distil_masks(
    model: nn.Module,
    x: torch.Tensor,
    ids: torch.Tensor | None = None,
    cfg: CognitiveDistillationConfig = CognitiveDistillationConfig(),
    *,
    seed: int = 0,
    progress: Progress | None = None,
) -> torch.Tensor:
    """(n, 1, H, W) masks in (0, 1), on the CPU, for the uint8 images ``x[ids]`` (all of ``x``
    when ``ids`` is None), in that order. The random fill comes from one generator seeded with
    ``seed``, redrawn every step. The model is used frozen in eval mode and handed back as it
    came."""
    import torch

    from dormant.engine import frozen, to_float

    device = next(model.parameters()).device
    ids = torch.arange(len(x)) if ids is None else ids
    ids = ids.to(x.device)
    n = len(ids)
    g = torch.Generator().manual_seed(seed)
    out = []
    with frozen(model):
        for start in range(0, n, cfg.batch_size):
            xb = to_float(x[ids[start : start + cfg.batch_size]]).to(device)
            b, c, h, w = xb.shape
            with torch.no_grad():
                ref = model(xb)
            w_mask = torch.ones(b, 1, h, w, device=device, requires_grad=True)
            opt = torch.optim.Adam([w_mask], lr=cfg.lr, betas=cfg.betas)
            for _ in range(cfg.steps):
                m = _squash(w_mask)
                mixed = xb * m + (1 - m) * _fill(g, b, c, device)
                fidelity = (model(mixed) - ref).abs().mean(1)
                size = m.flatten(1).norm(p=cfg.p, dim=1)
                loss = (fidelity + cfg.gamma * size + cfg.beta * _tv(m)).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            out.append(_squash(w_mask).detach().cpu())
            if progress is not None:
                progress("cognitive distillation", start + b, n)
    if not out:
        return torch.empty(0, 1, *x.shape[2:])
    return torch.cat(out)


def cd_scores(masks: torch.Tensor) -> torch.Tensor:
    """(n,) L1 norm of each mask; smaller is more suspicious."""
    return masks.flatten(1).abs().sum(1)


def detection_auroc(
    model: nn.Module,
    x_clean: torch.Tensor,
    x_poisoned: torch.Tensor,
    cfg: CognitiveDistillationConfig = CognitiveDistillationConfig(),
    *,
    seed: int = 0,
    progress: Progress | None = None,
) -> float:
    """AUROC in [0, 1] of telling the uint8 images ``x_poisoned`` (positives) from ``x_clean``
    by the negated mask norm: 1 when every poisoned mask is smaller than every clean one."""
    import torch

    from dormant.metrics.detection import auroc

    if len(x_clean) == 0 or len(x_poisoned) == 0:
        raise DormantError("cognitive distillation AUROC needs at least one clean and one "
                           "poisoned image")
    # one call, so both sets share the seed's fill stream and the batching
    masks = distil_masks(model, torch.cat([x_clean, x_poisoned.to(x_clean.device)]), None, cfg,
                         seed=seed, progress=progress)
    scores = cd_scores(masks)
    return auroc(-scores[: len(x_clean)], -scores[len(x_clean) :])


def cd_flags(clean_ref_scores: torch.Tensor, scores: torch.Tensor,
             threshold: float = 1.0) -> torch.Tensor:
    """The paper's rule: with mu and sigma (unbiased std, as ``torch.std``) of the clean
    reference scores, flag ``(mu - s) / sigma > threshold``; as in the authors' ``predict`` a
    flagged score must also lie below mu, which only matters for a negative threshold."""
    ref = clean_ref_scores.detach().double().flatten().cpu()
    if len(ref) < 2:
        raise DormantError("cognitive distillation flags need at least 2 clean reference scores "
                           f"to estimate a spread, got {len(ref)}")
    mu, sigma = ref.mean(), ref.std()
    z = (mu - scores.detach().double().cpu()) / sigma
    return (z > threshold) & (z > 0)


CONTROL_AUROC_MIN = 0.9
"""Positive control: AUROC on BadNets-triggered vs clean inputs, on every seed."""


def _control_seed(num) -> dict:
    a = num("cd_auroc_before")
    return {"auroc": a, "pass": None if a is None else a >= CONTROL_AUROC_MIN,
            "shown": "-" if a is None else f"AUROC {a:.3f}"}


def _dose_seed(num) -> dict:
    """At a dose only the triggered inputs the backdoor fires on are backdoor inputs: the
    AUROC over all triggered inputs is about 0.5 + ASR / 2 even for a perfect detector, so
    the rule reads ``cd_auroc_fired`` (None where no triggered input fired)."""
    a = num("cd_auroc_fired_before")
    return {"auroc": a, "pass": None if a is None else a >= CONTROL_AUROC_MIN,
            "shown": "-" if a is None else f"AUROC {a:.3f} on fired inputs"}


def _control_reached(seeds: list[dict]) -> str:
    passes = [v["pass"] for v in seeds]
    return f"AUROC {span([v['auroc'] for v in seeds], 3)}; {sum(passes)}/{len(passes)} seeds pass"


@register_defense(
    "cd", CognitiveDistillationConfig, label="Cognitive Distillation", presets=PRESETS,
    columns=("cd_auroc", "cd_auroc_fired"), rank=1,
    report={"cd_auroc_before": "CD AUROC before", "cd_auroc_after": "CD AUROC after"},
    control=Control(f"AUROC >= {CONTROL_AUROC_MIN:g} on BadNets-triggered vs clean inputs, on "
                    "every seed", _control_seed, _control_reached,
                    thresholds={"cd_auroc_min": CONTROL_AUROC_MIN}, dose=_dose_seed,
                    dose_rule=f"AUROC >= {CONTROL_AUROC_MIN:g} on the triggered inputs the "
                              "backdoor fires on vs clean inputs, on every seed"))
def study_scan(cfg: CognitiveDistillationConfig, ctx, model: nn.Module, trigger
               ) -> tuple[dict, dict]:
    """The backdoor study's scan: masks of ``cfg.images`` / 2 clean and as many triggered
    non-target evaluation images; the AUROC of -norm (a small mask is the suspect sign), and
    the same over the triggered images the model sends to the target (``cd_auroc_fired``,
    what a dose-matched control reads)."""
    import torch

    from dormant.engine import predict
    from dormant.metrics.detection import auroc

    others = torch.nonzero(ctx.y_eval != ctx.target).flatten()
    n = len(others) if cfg.images is None else cfg.images
    half = min(n // 2, len(others) // 2)
    clean = ctx.x_eval[others[:half]]
    triggered = trigger.stamp(ctx.x_eval[others[half : 2 * half]])
    h, w = clean.shape[2:]
    cfg = cfg.model_copy(update={"gamma": cfg.gamma * REF_PIXELS / (h * w)})
    m_clean = distil_masks(model, clean, cfg=cfg, seed=ctx.seed)
    m_bad = distil_masks(model, triggered, cfg=cfg, seed=ctx.seed + 1)
    s_clean, s_bad = -cd_scores(m_clean), -cd_scores(m_bad)
    score = auroc(s_clean, s_bad)
    fired = (predict(model, triggered).argmax(1).cpu() == ctx.target) if len(triggered) \
        else None
    fired_score = (round(auroc(s_clean, s_bad[fired]), 4)
                   if fired is not None and fired.any() else None)
    shown = ctx.shown
    return ({"cd_auroc": round(score, 4), "cd_auroc_fired": fired_score},
            {"cd_inputs_clean": clean[:shown].cpu(), "cd_masks_clean": m_clean[:shown],
             "cd_inputs_poisoned": triggered[:shown].cpu(), "cd_masks_poisoned": m_bad[:shown]})
