"""Weight-space and privacy analysis of one model: distances to the pretrained model and the
oracle, linear mode connectivity from theta_pre, and membership inference on the held-out
forget split. Computed once per unlearned model, and the MIA again after each attack."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from dormant.data.dataset import stratified_ids
from dormant.experiments.prepare import Prepared
from dormant.metrics import comparable, l2_distance, lmc_curve, loss_auc, loss_barrier, svc_mia_auc


@dataclass(frozen=True)
class Probe:
    """Evaluation subsets, fixed per prepared seed so every model is measured on the same
    images: a retain sample, the held-out forget split, and the test set cut in two disjoint
    halves (one trains the SVC attack's "out" side, the other scores against the target)."""

    retain: torch.Tensor
    heldout: torch.Tensor
    test: torch.Tensor
    test_shadow: torch.Tensor
    test_eval: torch.Tensor


def make_probe(prep: Prepared, size: int) -> Probe:
    dev = prep.x.device
    g = torch.Generator().manual_seed(prep.seed)
    retain = prep.split.retain[torch.randperm(len(prep.split.retain), generator=g)[:size]]
    n_test = len(prep.y_test)
    test = stratified_ids(prep.y_test.cpu(), min(size, n_test), prep.dataset.num_classes,
                          prep.seed)
    halves = torch.randperm(n_test, generator=g)
    return Probe(retain.sort().values.to(dev), prep.split.heldout.to(dev), test.to(dev),
                 halves[: n_test // 2].to(dev), halves[n_test // 2:].to(dev))


def mia(prep: Prepared, probe: Probe, model: nn.Module) -> dict:
    """Both attacks as ROC AUC of the held-out forget split against unseen test images:
    0.5 means the forgotten examples look like data the model never saw."""
    svc = svc_mia_auc(model, prep.x, prep.y, probe.retain, prep.x_test, prep.y_test,
                      probe.test_shadow, probe.heldout, probe.test_eval, seed=prep.seed)
    loss = loss_auc(model, prep.x, prep.y, probe.heldout, prep.x_test, prep.y_test,
                    probe.test_eval)
    return {"mia_auc": round(svc, 4), "mia_loss_auc": round(loss, 4)}


def analyse(prep: Prepared, probe: Probe, model: nn.Module, is_original: bool,
            lmc_points: int) -> dict:
    """A model with other weights than the original's (a SISA ensemble) has no distance or
    path to it: those columns are None."""
    same = comparable(model, prep.original)
    out = {"l2_to_oracle": round(l2_distance(model, prep.oracle), 6) if same else None,
           **mia(prep, probe, model)}
    if is_original or not same:
        return {**out, "barrier": None, "lmc": None}
    sets = {"retain": (prep.x, prep.y, probe.retain), "forget": (prep.x, prep.y, probe.heldout),
            "test": (prep.x_test, prep.y_test, probe.test)}
    curve = lmc_curve(prep.original, model, sets, points=lmc_points)
    curve = {k: [round(v, 5) for v in vals] for k, vals in curve.items()}
    return {**out, "barrier": round(loss_barrier(curve["t"], curve["retain_loss"]), 5),
            "lmc": curve}
