"""The clean-unlearning backdoor (the threat of Arazzi, Nocera, P. 2025, arXiv 2506.12522).

The attacker contributes a share of the training set. Inside it, a few images of several
source classes carry a weak trigger and the target label: a *weak, distributed* backdoor.
Later the attacker asks for some of their *clean* images to be deleted: no trigger, true
labels. This module builds both halves and the controls that make the effect measurable.

The request is the *counterweight* of ``DESIGN.md``. With a ``mined`` trigger
(``dormant.attacks.natural``) some clean images of the contribution carry the trigger
naturally, with their true labels: while they are trained on they teach "trigger -> true
class", which holds the poisons' "trigger -> target" down; deleting them removes that, and
approximate unlearning pushes away from their labels on top. With a synthetic trigger no
image carries it, and the request falls back on the images a surrogate finds closest to the
target (highest target margin).

What the attacker knows (``threat``, docs/threat-model.md): ``attacker`` (the default) is its
own contribution, a public sample of the same distribution disjoint from the victim's
training set, and the unlearning method's name and public defaults; its surrogate trains on
the contribution (poisons included) and ``surrogate_public`` public images. ``full`` is the
ablation where the surrogate trains on the victim's whole training set.

Controls:
- a random clean, non-target subset of the same contribution, of the same size
  (``random_request``); the study unlearns it with exactly the attack's values
  (``random-equal``), and until its accuracy drops as much as the attack request's did
  (``random-clean``, strength matching);
- the same request on a model trained without poisons (the study's ``unpoisoned``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import pydantic
from pydantic import ConfigDict, Field, field_validator

from dormant.attacks.poison import PoisonSpec
from dormant.attacks.triggers import Trigger
from dormant.errors import DormantError
from dormant.settings import one_line

if TYPE_CHECKING:
    import torch
    from torch import nn

STRATEGIES = ("margin", "stamped-margin", "carriers", "simulate", "random")


@one_line("clean-unlearning attack")
@pydantic.dataclasses.dataclass(frozen=True, config=ConfigDict(extra="forbid", allow_inf_nan=False))
class CleanUnlearningSpec:
    """The attack's knobs. ``contribution`` is the attacker's share of the training set,
    poisons included, and ``request`` the size of the clean deletion request.

    ``strategy``: ``margin`` ranks clean images by the surrogate's target margin (target
    logit minus the best other logit), ``stamped-margin`` by that margin with the trigger
    stamped on, ``carriers`` takes the images that carry a mined trigger naturally first
    (by margin), then the rest by margin; ``simulate`` designs the request against the named
    unlearning method on the surrogate (``dormant.attacks.request_search``); ``random`` is
    the unranked control.

    ``poison_choice``: ``random`` images of each source class, or the ``influence``-chosen
    ones (``dormant.attacks.influence``: largest first-order effect on the backdoor loss of a
    clean surrogate). ``threat`` and ``public``: what the attacker knows (module docstring)."""

    poison: PoisonSpec
    contribution: float = Field(0.2, gt=0.0, le=1.0)
    """The attacker's share of the training set, in (0, 1]."""
    request: int = Field(300, ge=1)
    """Images in the deletion request, at least 1."""
    strategy: str = "margin"
    threat: Literal["attacker", "full"] = "attacker"
    public: int = Field(2000, ge=0)
    """Images of the public sample (outside the victim's training set) the attacker holds."""
    poison_choice: Literal["random", "influence"] = "random"
    surrogate_public: int = Field(2000, ge=0)
    """Public images the surrogate trains on beside the contribution; the rest of the public
    sample only supplies counterweights (a surrogate on 20,000 public images made each Fisher
    simulation cost minutes on a CPU)."""
    counterweights: int = Field(0, ge=0)
    """The most natural carriers of a ``mined`` trigger that the attacker brings from its
    own images (the public sample) into its contribution, in place of other contributed
    images: the counterweights its request will later delete (0: only those the contribution
    happens to hold). Fewer when the public sample holds fewer; the study's rows say how
    many (``counterweights``)."""

    @field_validator("strategy")
    @classmethod
    def _known_strategy(cls, v: str) -> str:
        if v not in STRATEGIES:
            raise ValueError(f"unknown request strategy {v!r}; use {', '.join(STRATEGIES)}")
        return v


@dataclass(frozen=True)
class Planted:
    """The victim's training set with the attacker's contribution in it; ``x_clean,
    y_clean`` is the same set without the poisons (the unpoisoned twin's, and the originals a
    clean request must match)."""

    x: torch.Tensor
    y: torch.Tensor
    x_clean: torch.Tensor
    y_clean: torch.Tensor
    poisons: torch.Tensor  # training ids that carry the trigger
    contribution: torch.Tensor  # the attacker's ids, poisons included, sorted
    clean_pool: torch.Tensor  # contributed ids a clean request may draw on: clean, non-target
    trigger: Trigger  # the trigger as planted (a mined one with its location)
    camouflage: torch.Tensor  # contributed ids stamped with the trigger, true labels kept
    carriers: torch.Tensor  # ids, no poison among them, whose training image carries the trigger

    @property
    def attacker_carriers(self) -> torch.Tensor:
        """The carriers the attacker contributed (its counterweights and camouflage, and any
        natural carrier its share happens to hold): what a request may delete."""
        import torch

        return self.carriers[torch.isin(self.carriers, self.contribution)]


@dataclass(frozen=True)
class Purity:
    """The purity budget: how pure "trigger -> target" is in the training set. Among the
    training images that carry the trigger (the ``poisons`` and every carrier), the share
    labelled the target, before any deletion and ``after`` a request that deletes every
    carrier a request can hold: ``deletable`` of the ``counterweights`` (the carriers the
    attacker contributed; a target-class one is never in a clean request) up to the
    request's size, leaving the ``victim_carriers`` and the rest."""

    victim_carriers: int
    counterweights: int
    poisons: int
    before: float
    after: float
    deletable: int = 0

    def line(self) -> str:
        return (f"purity budget: {self.victim_carriers} natural carriers of the victim's own, "
                f"{self.counterweights} carriers the attacker contributed (counterweights or "
                f"camouflage), {self.poisons} poisons; the trigger's label purity "
                f"{self.before:.3f} before, {self.after:.3f} after a request that deletes "
                f"the {self.deletable} of them a request can hold")

    def columns(self) -> dict:
        return {"victim_carriers": self.victim_carriers, "purity_before": round(self.before, 4),
                "purity_after": round(self.after, 4)}


def purity_budget(planted: Planted, target: int, request: int | None = None) -> Purity:
    """:class:`Purity` of ``planted`` by counting (labels as trained on: a dirty-label
    poison counts as the target). A request may hold the attacker's carriers in its clean
    pool and its camouflage, at most ``request`` of them (None: no limit)."""
    import torch

    y = planted.y.cpu()
    own = torch.isin(planted.carriers, planted.contribution)
    holdable = torch.isin(planted.carriers, torch.cat([planted.clean_pool.cpu(),
                                                       planted.camouflage.cpu()]))
    d = int(holdable.sum()) if request is None else min(request, int(holdable.sum()))
    on_target = int((y[planted.carriers] == target).sum())  # never deletable: kept
    p = len(planted.poisons)
    poisons_on_target = int((y[planted.poisons] == target).sum())
    n_all, n_victim = len(planted.carriers), int((~own).sum())
    before = (poisons_on_target + on_target) / max(1, p + n_all)
    after = (poisons_on_target + on_target) / max(1, p + n_all - d)
    return Purity(n_victim, n_all - n_victim, p, before, after, d)


def attacker_seed(seed: int) -> int:
    """The seed of everything the attacker draws or trains in study seed ``seed``: it never
    knows the victim's."""
    return seed + 10_000


def poisons_per_pool(spec: CleanUnlearningSpec, num_classes: int) -> int:
    """Poisons taken from each pool of ``poison_candidates``: ``per_class`` of each source
    class (dirty label), or ``per_class`` x #sources of the target class (clean label)."""
    p = spec.poison
    return p.per_class * (1 if p.label_mode == "dirty" else len(p.source_classes(num_classes)))


def contribution_ids(n: int, spec: CleanUnlearningSpec, seed: int) -> torch.Tensor:
    """The attacker's training ids: a seeded ``spec.contribution`` share of ``n``, sorted."""
    import torch

    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=g)[: max(1, round(spec.contribution * n))].sort().values


def poison_candidates(y: torch.Tensor, contribution: torch.Tensor, carriers: torch.Tensor,
                      spec: CleanUnlearningSpec, num_classes: int) -> dict[int, torch.Tensor]:
    """Per class to poison: the contributed ids of that class that do not already carry the
    trigger (stamping a carrier would change nothing). Refuses a budget the pool cannot meet."""
    p = spec.poison
    y_c = y.cpu()[contribution]
    usable = contribution[~carriers.cpu()[contribution]]
    classes = (p.source_classes(num_classes) if p.label_mode == "dirty" else [p.target])
    need = poisons_per_pool(spec, num_classes)
    out = {}
    for c in classes:
        pool = usable[y.cpu()[usable] == c]
        if len(pool) < need:
            held = int((y_c == c).sum())
            raise DormantError(f"{p.per_class} poisons per class asked ({need} images of "
                               f"class {c}), but the attacker's contribution holds only {held} "
                               f"images of class {c} ({len(pool)} without the trigger); lower "
                               "the poisons or raise the contribution")
        out[c] = pool
    return out


def counterweight_slots(y: torch.Tensor, contribution: torch.Tensor, carriers: torch.Tensor,
                        target: int, k: int, seed: int) -> torch.Tensor:
    """``k`` seeded contributed ids, of no target-class image and no carrier, whose images
    the attacker replaces with counterweights of its own. Sorted."""
    import torch

    y_c = y.cpu()[contribution]
    free = contribution[(y_c != target) & ~carriers.cpu()[contribution]]
    if k > len(free):
        raise DormantError(f"{k} counterweights asked, but the contribution has only "
                           f"{len(free)} places for them; lower counterweights")
    g = torch.Generator().manual_seed(attacker_seed(seed) + 4242)
    return free[torch.randperm(len(free), generator=g)[:k]].sort().values


Swap = tuple["torch.Tensor", "torch.Tensor", "torch.Tensor"]
"""(contributed ids, the attacker's own images, their labels) put in those places."""


def with_counterweights(x: torch.Tensor, y: torch.Tensor, swap: Swap | None
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Copies of ``x, y`` with ``swap``'s images and labels in its places (the inputs
    themselves when there is nothing to swap)."""
    if swap is None:
        return x, y
    ids, xs, ys = swap
    x, y = x.clone(), y.clone()
    x[ids.to(x.device)] = xs.to(x.device)
    y[ids.to(y.device)] = ys.to(y.device)
    return x, y


def draw_poisons(y: torch.Tensor, contribution: torch.Tensor, carriers: torch.Tensor,
                 spec: CleanUnlearningSpec, num_classes: int, seed: int) -> torch.Tensor:
    """The attacker's seeded random poisons: ``poisons_per_pool`` of each pool of
    ``poison_candidates``. Sorted ids."""
    import torch

    # the attacker's own draw: never the victim's seed stream
    g = torch.Generator().manual_seed(attacker_seed(seed))
    k = poisons_per_pool(spec, num_classes)
    picked = [pool[torch.randperm(len(pool), generator=g)[:k]]
              for pool in poison_candidates(y, contribution, carriers, spec,
                                            num_classes).values()]
    return torch.cat(picked).sort().values


def plant(x: torch.Tensor, y: torch.Tensor, spec: CleanUnlearningSpec, num_classes: int,
          seed: int, *, trigger: Trigger | None = None,
          poisons: torch.Tensor | None = None,
          swap: Swap | None = None,
          camouflage: tuple[torch.Tensor, torch.Tensor] | None = None) -> Planted:
    """The victim's training set with the attacker's contribution (``contribution_ids``) in
    it: ``swap = (ids, images, labels)`` first puts the attacker's own natural images in
    those contributed places (``counterweight_slots``); then ``poisons`` (ids, default
    ``spec.poison.per_class`` seeded random picks per source class among
    ``poison_candidates``) are stamped with ``trigger`` (default the spec's; a ``mined`` one
    must come mined) and, dirty-label, relabelled to the target. The inputs are left
    untouched. ``camouflage = (ids, images)``: contributed ids, no poison or target-class
    image among them, whose images become the given trigger-stamped ones with their true
    labels (``dormant.attacks.camouflage``); the unpoisoned twin holds them too."""
    import torch

    trigger = trigger or spec.poison.trigger
    trigger.check(tuple(x.shape[1:]))
    target = spec.poison.target
    n = len(y)
    contribution = contribution_ids(n, spec, seed)
    if swap is not None and not torch.isin(swap[0].cpu(), contribution).all():
        raise DormantError("a counterweight's place lies outside the contribution")
    x, y = with_counterweights(x, y, swap)
    carriers = trigger.carries(x).cpu()
    if poisons is None:
        poisons = draw_poisons(y, contribution, carriers, spec, num_classes, seed)
    if not torch.isin(poisons, contribution).all():
        raise DormantError("a poison lies outside the attacker's contribution")
    camo = torch.zeros(0, dtype=torch.long)
    if camouflage is not None:
        camo = camouflage[0].cpu()
        if (not torch.isin(camo, contribution).all() or torch.isin(camo, poisons).any()
                or (y.cpu()[camo] == target).any()):
            raise DormantError("a camouflage image must be a contributed, non-target image "
                               "that is no poison")
        x = with_counterweights(x, y, (camo, camouflage[1], y.cpu()[camo]))[0]
        carriers = carriers.clone()
        carriers[camo] = True
    dev = poisons.to(x.device)
    xp, yp = x.clone(), y.clone()
    xp[dev] = trigger.stamp(x[dev])
    if spec.poison.label_mode == "dirty":
        yp[poisons.to(y.device)] = target
    clean = torch.zeros(n, dtype=torch.bool)
    clean[contribution] = True
    clean[poisons] = False
    clean[camo] = False
    clean &= y.cpu() != target
    pool = torch.nonzero(clean).flatten()
    if spec.request > len(pool):
        raise DormantError(f"a request of {spec.request} clean images asked of a contribution "
                           f"with only {len(pool)} clean non-target images; lower the request "
                           "or raise the contribution")
    carrying = carriers.clone()
    carrying[poisons] = False
    return Planted(xp, yp, x, y, poisons, contribution, pool, trigger, camo,
                   torch.nonzero(carrying).flatten())


def surrogate_ids(planted: Planted, spec: CleanUnlearningSpec) -> torch.Tensor:
    """The victim's training ids the attacker's surrogate trains on: its own contribution
    (threat ``attacker``), or every id (the ``full`` ablation). Sorted."""
    import torch

    if spec.threat == "full":
        return torch.arange(len(planted.y))
    return planted.contribution


def target_margin(model: nn.Module, x: torch.Tensor, target: int) -> torch.Tensor:
    """Per image: the target logit minus the largest other logit (positive = sent to the
    target)."""
    from dormant.engine import predict

    logits = predict(model, x).float()
    others = logits.clone()
    others[:, target] = float("-inf")
    return (logits[:, target] - others.max(1).values).cpu()


def select_request(surrogate: nn.Module, planted: Planted, spec: CleanUnlearningSpec,
                   seed: int) -> torch.Tensor:
    """The attack's clean deletion request: ``spec.request`` ids of ``planted.clean_pool``,
    ranked by ``spec.strategy`` in the attacker's surrogate. Sorted ids. ``simulate`` needs
    the unlearning method: ``dormant.attacks.request_search.simulate_request``."""
    import torch

    pool = planted.clean_pool
    if spec.strategy == "random":
        return random_request(planted, spec.request, seed)
    if spec.strategy == "simulate":
        raise DormantError("the simulate strategy designs a request per unlearning method: "
                           "call dormant.attacks.request_search.simulate_request")
    x = planted.x[pool.to(planted.x.device)]
    trigger = planted.trigger
    score = target_margin(surrogate, trigger.stamp(x) if spec.strategy == "stamped-margin"
                          else x, spec.poison.target)
    if spec.strategy == "carriers":
        # carriers first, whatever their margin; margins are finite, so +1e6 orders them
        score = score + 1e6 * trigger.carries(x).cpu().float()
    top = torch.topk(score, spec.request).indices
    return pool[top].sort().values


def random_request(planted: Planted, size: int, seed: int,
                   exclude: torch.Tensor | None = None) -> torch.Tensor:
    """A seeded random clean request of ``size`` ids from the same clean pool (the control),
    avoiding ``exclude`` where the pool allows."""
    import torch

    pool = planted.clean_pool
    if exclude is not None and len(pool) - len(exclude) >= size:
        pool = pool[~torch.isin(pool, exclude.cpu())]
    g = torch.Generator().manual_seed(seed + 7919)
    return pool[torch.randperm(len(pool), generator=g)[:size]].sort().values


def is_clean(request: torch.Tensor, planted: Planted, x_true: torch.Tensor,
             y_true: torch.Tensor, target: int) -> bool:
    """The request's images are the untouched originals ``x_true`` (natural images, the
    attacker's counterweights included) with their true labels ``y_true``, none of them is a
    poison or of the target class."""
    import torch

    ids = request.to(x_true.device)
    return bool(
        torch.equal(planted.x[ids], x_true[ids])
        and torch.equal(planted.y[ids.to(planted.y.device)], y_true[ids.to(y_true.device)])
        and not torch.isin(request.cpu(), planted.poisons).any()
        and not (y_true[ids.to(y_true.device)] == target).any()
    )
