"""The ``simulate`` request strategy: a clean deletion request designed against one named
unlearning method, on the attacker's surrogate (Arazzi, Nocera, P. 2025 design training and
unlearning "computationally" so that the request wakes the planted signal).

The attacker knows the method's name and its public defaults (docs/threat-model.md), so it
can run the method itself, on its own surrogate, with any candidate request, and watch its
own held-out ASR. The search is batched:

1. a first-order proxy ranks every clean candidate: the alignment of the method's update on
   that image with the direction that raises the backdoor (``dormant.attacks.influence``);
   Boundary Shrink's update pulls toward the FGSM neighbour's label, every other method's is
   taken as gradient ascent on the true label (what Bad Teacher, NegGrad+, Boundary Expand
   and the ascent methods do to first order; Fisher forgetting has no per-image update, so
   for it the proxy is only a heuristic and the simulation decides);
2. up to six whole requests (the proxy's top, its next block, the margin ranking, the
   natural carriers when there are any, a mix, a random draw) are each *simulated*: the
   real method runs on the surrogate with that request, and the surrogate's ASR rise and
   clean-accuracy drop are measured on the attacker's held-out images;
3. the request with the largest ASR rise among those costing at most ``max_cost`` points of
   clean accuracy wins (all too costly: the cheapest).

Every simulated candidate comes back in the result, with the proxy's mean score, so the
proxy is measured against the real simulation in every run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from dormant.attacks.influence import alignment, backdoor_gradient
from dormant.attacks.poison import attack_success_rate
from dormant.attacks.triggers import Trigger
from dormant.engine import Progress, Recipe, evaluate, to_float
from dormant.unlearn import UnlearnContext, UnlearnData, unlearn
from dormant.unlearn.boundary_shrink import neighbour_labels

MAX_COST = 5.0
"""Clean-accuracy points a designed request may cost on the surrogate (the issue's bar)."""


@dataclass(frozen=True)
class AttackerData:
    """Everything the attacker holds, as one training set: ``x, y`` are the surrogate's
    training images (its contribution as planted, then ``surrogate_public`` public images),
    ``victim_ids[i]`` the victim's id of row ``i`` (-1 for a public image); ``x_eval,
    y_eval`` are held out (the public sample's rest, or the contribution when there is no
    public sample) for the attacker's own ASR and clean accuracy."""

    x: torch.Tensor
    y: torch.Tensor
    victim_ids: torch.Tensor
    x_eval: torch.Tensor
    y_eval: torch.Tensor


@dataclass(frozen=True)
class Candidate:
    name: str
    proxy: float  # the proxy's mean score over the request's images
    asr_rise: float  # surrogate ASR after minus before, points
    clean_drop: float  # surrogate clean accuracy before minus after, points
    seconds: float


@dataclass(frozen=True)
class SearchResult:
    ids: torch.Tensor  # the chosen request, victim ids, sorted
    chosen: str
    candidates: tuple[Candidate, ...]
    proxy_seconds: float

    def summary(self) -> dict:
        return {"chosen": self.chosen, "proxy_seconds": round(self.proxy_seconds, 3),
                "candidates": [vars(c) for c in self.candidates]}


ProxyLabels = Callable[[nn.Module, torch.Tensor, torch.Tensor, dict],
                      tuple[torch.Tensor, float]]
"""(surrogate, uint8 images, true labels, the method's values) -> (labels, sign): the
method's per-image loss is ``sign * CE(f(x), labels)``."""


def _ascent(model, xu, y, hp):
    """Gradient ascent on the true label: every method without an entry in ``PROXIES``."""
    return y, -1.0


def _shrink(model, xu, y, hp):
    """Boundary Shrink pulls each image toward its FGSM neighbour's label."""
    eps = hp.get("epsilon", 0.1)
    nb = [neighbour_labels(model, to_float(xu[s : s + 256]), y[s : s + 256], eps)
          for s in range(0, len(xu), 256)]
    return torch.cat(nb), 1.0


PROXIES: dict[str, ProxyLabels] = {"boundary_shrink": _shrink}
"""Methods whose per-image update is not gradient ascent on the true label; one entry more
registers another."""


def proxy_scores(method: str, hp: dict, surrogate: nn.Module, att: AttackerData,
                 rows: torch.Tensor, trigger: Trigger, target: int) -> torch.Tensor:
    """Per candidate row of ``att``: the first-order ASR gain of one update of ``method`` on
    it (positive: the update lowers the surrogate's backdoor loss)."""
    surrogate = surrogate.eval()
    reference = backdoor_gradient(surrogate, att.x_eval[att.y_eval != target], trigger, target)
    xu, y = att.x[rows.to(att.x.device)], att.y[rows.to(att.y.device)]
    labels, sign = PROXIES.get(method, _ascent)(surrogate, xu, y, hp)
    return sign * alignment(surrogate, xu, labels, reference)


def _measure(model: nn.Module, att: AttackerData, trigger: Trigger, target: int
             ) -> tuple[float, float]:
    return (attack_success_rate(model, att.x_eval, att.y_eval, trigger, target),
            evaluate(model, att.x_eval, att.y_eval).acc)


def simulate_request(method: str, hp: dict, surrogate: nn.Module, att: AttackerData,
                     pool: torch.Tensor, size: int, trigger: Trigger, target: int, *,
                     recipe: Recipe, init: Callable[..., nn.Module], seed: int,
                     margin: torch.Tensor, num_classes: int, max_cost: float = MAX_COST,
                     progress: Progress | None = None) -> SearchResult:
    """The request of ``size`` rows of ``pool`` (rows of ``att``: clean, non-target,
    contributed) whose unlearning by ``method`` (values ``hp``) raises the surrogate's ASR
    most at a clean cost of at most ``max_cost`` points. ``margin``: the surrogate's target
    margin per pool row (the ``margin`` baseline's ranking); ``seed``: the attacker's own."""
    t0 = time.perf_counter()
    proxy = proxy_scores(method, hp, surrogate, att, pool, trigger, target)
    proxy_s = time.perf_counter() - t0
    order = torch.argsort(proxy, descending=True)
    by_margin = torch.argsort(margin, descending=True)
    carries = trigger.carries(att.x[pool.to(att.x.device)]).cpu()
    g = torch.Generator().manual_seed(seed)
    half = size // 2
    mix = torch.cat([order[:half], by_margin[~torch.isin(by_margin, order[:half])]])[:size]
    plans = {
        "proxy": order[:size],
        "proxy-next": order[size : 2 * size] if len(order) >= 2 * size else order[-size:],
        "margin": by_margin[:size],
        "proxy+margin": mix,
        "random": torch.randperm(len(pool), generator=g)[:size],
    }
    if carries.any():
        lead = torch.argsort(proxy + 1e6 * carries.float(), descending=True)
        plans["carriers"] = lead[:size]
    asr0, acc0 = _measure(surrogate, att, trigger, target)
    ctx = UnlearnContext(recipe, init, seed, None)
    candidates, chosen_rows = [], {}
    for i, (name, pick) in enumerate(plans.items()):
        t1 = time.perf_counter()
        forget = pool[pick].to(att.x.device)
        keep = torch.ones(len(att.y), dtype=torch.bool, device=att.x.device)
        keep[forget] = False
        data = UnlearnData(att.x, att.y, forget, torch.nonzero(keep).flatten(), forget,
                           num_classes)
        model = unlearn(method, surrogate, data, ctx, **hp)
        asr, acc = _measure(model, att, trigger, target)
        candidates.append(Candidate(name, round(float(proxy[pick].mean()), 6),
                                    round(asr - asr0, 4), round(acc0 - acc, 4),
                                    round(time.perf_counter() - t1, 3)))
        chosen_rows[name] = pick
        if progress is not None:
            progress(f"simulate {method}", i + 1, len(plans))
    affordable = [c for c in candidates if c.clean_drop <= max_cost]
    best = (max(affordable, key=lambda c: c.asr_rise) if affordable
            else min(candidates, key=lambda c: c.clean_drop))
    ids = att.victim_ids[pool[chosen_rows[best.name]]].sort().values
    return SearchResult(ids, best.name, tuple(candidates), proxy_s)
