"""Cognitive Distillation: a shortcut backdoor gets small masks that sit on its trigger, the
masks stay inside (0, 1) with the model untouched, images in a batch do not interact, and the
paper's flagging rule in numbers."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dormant.defenses import (
    CognitiveDistillationConfig,
    cd_flags,
    cd_scores,
    detection_auroc,
    distil_masks,
)
from dormant.defenses import cognitive_distillation as cd
from dormant.errors import DormantError


class ShortcutBackdoor(nn.Module):
    """A backdoor that behaves like the deep nets of the paper: once the trigger is present the
    output is a fixed target logit vector, whatever the rest of the image; otherwise it is the
    clean MLP's. The detector looks only at the trigger's pixels."""

    def __init__(self, clean: nn.Module, trigger, target: int) -> None:
        super().__init__()
        self.clean = clean
        weight, pattern = trigger.pattern((1, 8, 8))
        self.register_buffer("weight", weight)
        self.register_buffer("pattern", pattern)
        self.register_buffer("target", 10.0 * F.one_hot(torch.tensor(target), 10).float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gap = ((x - self.pattern).abs() * self.weight).flatten(1).sum(1) / self.weight.sum()
        on = torch.sigmoid(40 * (0.25 - gap))[:, None]
        return (1 - on) * self.clean(x) + on * self.target


def _clean_and_triggered(digits, trigger, target, n=100):
    """n clean test images and n other non-target test images with the trigger stamped."""
    ids = torch.nonzero(digits.y_test != target).flatten()
    return digits.x_test[ids[:n]], trigger.stamp(digits.x_test[ids[n : 2 * n]])


def test_shortcut_backdoor_inputs_get_small_masks_on_the_trigger(digits, digits_backdoor):
    trig = digits_backdoor["trigger"]
    model = ShortcutBackdoor(digits_backdoor["clean"], trig, digits_backdoor["target"])
    xc, xt = _clean_and_triggered(digits, trig, digits_backdoor["target"])
    masks = distil_masks(model, torch.cat([xc, xt]))  # the paper's defaults, 100 steps
    scores = cd_scores(masks)
    sc, st = scores[:100], scores[100:]
    # measured: clean 60.5 +- 1.6 of 64 pixels, triggered 29.8 +- 1.7 (ratio 0.49); with
    # gamma 0.01 on only 64 pixels the mask is still shrinking towards the patch at step 100
    assert st.mean() < 0.6 * sc.mean()
    assert st.max() < sc.min()
    # what is left of a triggered image's mask sits on the 3x3 patch: measured mean mask
    # 0.77 on the patch's 9 pixels against 0.42 on the other 55
    on = masks[100:, :, 5:, 5:].flatten(1).sum(1)
    off = (st - on) / 55
    assert (on / 9).mean() > 0.7 and (on / 9).mean() > 1.5 * off.mean()
    auroc = detection_auroc(model, xc, xt)
    assert auroc >= 0.9  # measured 1.0
    # the AUROC is sklearn's on the negated norms of one distillation of clean then poisoned
    from sklearn.metrics import roc_auc_score  # 2 s of import: not at collection time

    labels = torch.cat([torch.zeros(100), torch.ones(100)])
    assert auroc == pytest.approx(roc_auc_score(labels.numpy(), (-scores).numpy()))
    # the paper's rule flags every triggered input and about a sixth of clean ones
    # (measured 0.21: the clean norms are near-normal and t = 1)
    assert bool(cd_flags(sc, st).all())
    assert float(cd_flags(sc, sc).float().mean()) < 0.3


def test_badnets_mlp_masks_concentrate_on_the_trigger(digits, digits_backdoor):
    """The fixture's BadNets MLP is no shortcut: its non-target logits still follow the digit
    under the trigger, so the norm barely separates triggered from clean inputs (measured at the
    defaults: 61.9 vs 61.1 pixels, AUROC 0.39; gamma 0.16: 6.4 vs 8.1, AUROC 0.61). What CD does
    find is the trigger: with gamma scaled to 8x8 images (0.01 * 32^2 / 8^2 = 0.16) a triggered
    image keeps twice as much of its mask on the patch as a clean one."""
    trig = digits_backdoor["trigger"]
    xc, xt = _clean_and_triggered(digits, trig, digits_backdoor["target"])
    masks = distil_masks(digits_backdoor["badnets"], torch.cat([xc, xt]),
                         cfg=CognitiveDistillationConfig(gamma=0.16))
    share = masks[:, :, 5:, 5:].flatten(1).sum(1) / cd_scores(masks)
    # measured: 0.42 triggered, 0.20 clean (the patch is 9/64 = 0.14 of the image)
    assert share[100:].mean() > 1.7 * share[:100].mean()
    assert share[100:].mean() > 0.35


def test_masks_stay_inside_the_unit_interval_and_the_model_is_untouched(digits,
                                                                       digits_backdoor):
    model = copy.deepcopy(digits_backdoor["badnets"]).train()
    first = next(model.parameters())
    first.requires_grad_(False)  # a frozen layer must stay frozen, the rest trainable
    before = [p.detach().clone() for p in model.parameters()]
    # a large lr drives |w| far past 9, where (tanh(w) + 1) / 2 rounds to 0 or 1 in float32
    cfg = CognitiveDistillationConfig(steps=30, lr=2.0, gamma=0.16)
    masks = distil_masks(model, digits.x_test, torch.arange(40), cfg)
    assert masks.shape == (40, 1, 8, 8) and masks.dtype == torch.float32
    assert masks.device.type == "cpu"
    assert masks.min() > 0 and masks.max() < 1
    assert masks.min() < 1e-5 and masks.max() > 1 - 1e-5  # it did saturate
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert model.training
    assert [p.requires_grad for p in model.parameters()] == [False] + [True] * (len(before) - 1)


def test_images_in_a_batch_do_not_interact(digits, digits_backdoor, monkeypatch):
    """With the random fill held fixed, one batch of 20 gives each image the mask that two
    batches of 10 give it: the loss is a mean of per-image losses and Adam is element-wise
    (the 1/b scale of the batch mean matters only through Adam's eps; the MLP's logits do not
    depend on the batch size)."""
    model = digits_backdoor["badnets"]
    ids = torch.arange(5, 25)
    cfg = CognitiveDistillationConfig(steps=40)
    monkeypatch.setattr(cd, "_fill", lambda g, b, c, device: torch.full((b, c, 1, 1), 0.5))
    one = distil_masks(model, digits.x_test, ids, cfg)
    two = distil_masks(model, digits.x_test, ids, CognitiveDistillationConfig(steps=40,
                                                                               batch_size=10))
    # measured: mean |difference| 1.8e-4, norms within 8.7e-5 relative; Adam's betas of 0.1
    # make it almost sign descent, so the eps effect on near-zero gradients shows in a few pixels
    assert (one - two).abs().mean() < 1e-3
    assert ((cd_scores(one) - cd_scores(two)).abs() / cd_scores(one)).max() < 1e-3
    assert ((one - two).abs() < 1e-4).float().mean() > 0.9
    monkeypatch.undo()
    # the random fill: one seed reproduces, another differs; ids pick rows of x
    a = distil_masks(model, digits.x_test, ids, cfg, seed=3)
    assert torch.equal(a, distil_masks(model, digits.x_test[ids], None, cfg, seed=3))
    b = distil_masks(model, digits.x_test, ids, cfg, seed=4)
    assert (a - b).abs().max() > 1e-2


def test_flags_follow_the_z_score_rule():
    ref = torch.tensor([10.0, 12.0, 14.0, 16.0, 18.0])  # mu 14, unbiased sigma sqrt(10)
    sigma = 10.0**0.5
    scores = torch.tensor([14.0 - 1.01 * sigma, 14.0 - 0.99 * sigma, 14.0, 30.0, 0.0])
    assert cd_flags(ref, scores).tolist() == [True, False, False, False, True]
    assert cd_flags(ref, scores, threshold=2.0).tolist() == [False, False, False, False, True]
    # as in the authors' predict, a flag also needs s below mu, even for a negative threshold
    assert cd_flags(ref, scores, threshold=-5.0).tolist() == [True, True, False, False, True]
    with pytest.raises(DormantError, match="at least 2 clean reference"):
        cd_flags(torch.tensor([1.0]), scores)


@pytest.mark.parametrize("kwargs, match", [
    ({"steps": 0}, "key 'steps': "),
    ({"batch_size": 0}, "key 'batch_size': "),
    ({"lr": 0.0}, "key 'lr': "),
    ({"betas": (0.1, 1.0)}, r"key 'betas\.1': "),
    ({"gamma": -1.0}, "key 'gamma': "),
    ({"beta": -1.0}, "key 'beta': "),
    ({"p": 3}, "key 'p': Input should be 1 or 2"),
    ({"gama": 0.1}, "key 'gama': unknown key"),
])
def test_config_is_validated(kwargs, match):
    with pytest.raises(DormantError, match="^cognitive distillation: " + match):
        CognitiveDistillationConfig(**kwargs)
