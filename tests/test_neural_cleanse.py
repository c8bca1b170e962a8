"""Neural Cleanse: the MAD rule in numbers, and the batched reverse-engineering finds a
BadNets target that a clean model does not have."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from dormant.attacks import attack_success_rate
from dormant.defenses import (
    NCMitigationConfig,
    NeuralCleanseConfig,
    mad_outliers,
    mitigate,
    reverse_triggers,
)
from dormant.engine import evaluate
from dormant.errors import DormantError


def test_mad_rule_flags_only_a_small_outlier():
    norms = torch.tensor([10.0, 11.0, 9.5, 10.5, 2.0, 10.2, 9.8, 10.1, 9.9, 10.3])
    anomaly, index, flagged = mad_outliers(norms)
    med = norms.median()
    mad = 1.4826 * (norms - med).abs().median()
    assert anomaly == pytest.approx(float((med - 2.0) / mad))
    assert anomaly > 2 and flagged == [4]
    assert index[4] == pytest.approx(anomaly)
    # a large outlier is not a backdoor: only norms below the median count
    _, _, flagged = mad_outliers(torch.tensor([10.0, 11.0, 9.5, 10.5, 40.0, 10.2]))
    assert flagged == []


def test_config_is_validated():
    with pytest.raises(DormantError, match="epochs"):
        NeuralCleanseConfig(epochs=0)


def test_reversed_trigger_flags_the_badnets_target_only(digits, digits_backdoor):
    cfg = NeuralCleanseConfig(epochs=40)
    clean_ids = torch.arange(0, len(digits.y_test), 2)  # clean images the defender holds
    res = {name: reverse_triggers(m, digits.x_test, digits.y_test, clean_ids, 10, cfg, seed=0)
           for name, m in digits_backdoor.items() if name in ("clean", "badnets")}
    bad, clean = res["badnets"], res["clean"]
    # the target needs the smallest trigger, and it is the most anomalous class; on 8x8
    # digits classes 4 and 7 have naturally small triggers: the clean model flags them too
    # (measured norms: clean 50.9 for class 0, 12.6 and 20.8 for 4 and 7; BadNets 12.2)
    assert int(bad.norms.argmin()) == 0 and 0 in bad.flagged
    assert int(bad.class_index.argmax()) == 0 and bad.anomaly_index > 2.0
    # the reversed trigger sits where the planted one does: the 3x3 bottom-right patch is 14%
    # of the image but holds 38% of the target's mask (measured), the clean model's class 0
    # mask has no such corner
    def corner_share(mask):
        return float(mask[-3:, -3:].sum() / mask.sum())

    assert corner_share(bad.masks[0, 0]) > 0.3
    assert corner_share(bad.masks[0, 0]) > 2 * corner_share(clean.masks[0, 0])
    assert int(bad.masks[0, 0].flatten().argmax()) in {r * 8 + c for r in range(5, 8)
                                                       for c in range(5, 8)}
    assert bad.norms[0] < 0.5 * bad.norms[1:].median()
    # the backdoor made class 0 far cheaper to reach than in the clean model
    assert bad.norms[0] < 0.6 * clean.norms[0]
    assert bad.masks.min() >= 0 and bad.masks.max() <= 1
    assert bad.patterns.min() >= 0 and bad.patterns.max() <= 1
    assert bad.success[0] >= 0.98  # the kept mask reached the success threshold
    # the model is handed back as it came: trainable, and in its own mode
    assert all(p.requires_grad for p in digits_backdoor["badnets"].parameters())


def test_batched_classes_equal_one_class_at_a_time(digits, digits_backdoor):
    """Each class has its own mask, pattern and cost, and Adam is element-wise: optimising
    all classes in one batch gives each class what a run of its own gives."""
    cfg = NeuralCleanseConfig(epochs=8)
    ids = torch.arange(0, len(digits.y_test), 2)
    m = digits_backdoor["badnets"]
    together = reverse_triggers(m, digits.x_test, digits.y_test, ids, 10, cfg, seed=0)
    for k in (0, 4):
        alone = reverse_triggers(m, digits.x_test, digits.y_test, ids, 10, cfg, classes=[k],
                                 seed=0)
        assert alone.norms[0] == pytest.approx(float(together.norms[k]), rel=1e-3)
        assert torch.allclose(alone.masks[0], together.masks[k], atol=1e-3)


@pytest.fixture(scope="module")
def badnets_reversed(digits, digits_backdoor):
    """NC on the BadNets MLP from the even test images (it flags 0, and the naturally small
    4 and 7)."""
    clean_ids = torch.arange(0, len(digits.y_test), 2)
    rev = reverse_triggers(digits_backdoor["badnets"], digits.x_test, digits.y_test, clean_ids,
                           10, NeuralCleanseConfig(epochs=40), seed=0)
    assert 0 in rev.flagged
    return clean_ids, rev


def test_mitigation_unlearns_the_reversed_trigger(digits, digits_backdoor, badnets_reversed):
    """Measured on the odd test images: ASR 100% -> 10.9% (seeds 1, 2: 13.3%, 19.4%), clean
    accuracy 95.0% -> 94.4% (91.1%, 91.7%). The same fine-tune with empty masks (nothing
    stamped) leaves ASR at 100%: the reversed trigger under true labels does the work."""
    clean_ids, rev = badnets_reversed
    model = digits_backdoor["badnets"]
    before = copy.deepcopy(model.state_dict())
    held = torch.arange(1, len(digits.y_test), 2)
    xh, yh = digits.x_test[held], digits.y_test[held]
    trigger, target = digits_backdoor["trigger"], digits_backdoor["target"]
    cfg = NCMitigationConfig(augment="none")  # 100 epochs of one batch: 100 SGD steps
    asr0 = attack_success_rate(model, xh, yh, trigger, target)
    acc0 = evaluate(model, digits.x_test, digits.y_test, held).acc
    fixed = mitigate(model, digits.x_test, digits.y_test, clean_ids, rev, cfg)
    assert asr0 > 99.0
    assert attack_success_rate(fixed, xh, yh, trigger, target) < 25.0
    assert evaluate(fixed, digits.x_test, digits.y_test, held).acc > acc0 - 3.0
    blank = dataclasses.replace(rev, masks=torch.zeros_like(rev.masks))
    plain = mitigate(model, digits.x_test, digits.y_test, clean_ids, blank, cfg)
    assert attack_success_rate(plain, xh, yh, trigger, target) > 95.0
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_mitigation_without_flags_is_an_unchanged_copy(digits, digits_backdoor,
                                                       badnets_reversed):
    clean_ids, rev = badnets_reversed
    model = digits_backdoor["badnets"]
    out = mitigate(model, digits.x_test, digits.y_test, clean_ids,
                   dataclasses.replace(rev, flagged=[]), NCMitigationConfig(augment="none"))
    assert out is not model
    sd = out.state_dict()
    assert all(torch.equal(v, sd[k]) for k, v in model.state_dict().items())
    assert all(a.data_ptr() != b.data_ptr()
               for a, b in zip(out.parameters(), model.parameters(), strict=True))


@pytest.mark.parametrize("bad", [dict(epochs=0), dict(batch_size=0), dict(lr=0.0),
                                 dict(unlearning_ratio=0.0), dict(unlearning_ratio=1.0),
                                 dict(weight_decay=-1.0), dict(augment="rotate")])
def test_mitigation_config_is_validated(bad):
    with pytest.raises(DormantError, match="nc mitigation"):
        NCMitigationConfig(**bad)
