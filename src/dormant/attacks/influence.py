"""First-order influence on the attacker's objective: how much one training step on an
image moves the surrogate toward "trigger -> target".

One SGD step on a loss ``l_i`` changes the parameters by ``-lr * grad l_i``, and so changes
the backdoor loss ``L = mean CE(f(stamp(x)), target)`` over the attacker's held-out
non-target images by ``-lr * <grad L, grad l_i>``. The *alignment* ``<grad l_i, grad L>`` is
therefore the first-order drop in ``L`` (a rise in ASR) that image ``i`` buys:

- a **poison** is trained on with ``l_i = CE(f(stamp(x_i)), target)``: the candidates with
  the largest alignment on a clean surrogate are chosen (the selection half of gradient
  matching; Geiping et al. 2021, "Witches' Brew", align poison gradients with the adversarial
  gradient by cosine; here the images are not perturbed, only chosen);
- a **deletion request** is unlearned with the method's own per-image loss (gradient ascent
  pushes ``-CE(f(x_i), y_i)``, Boundary Shrink ``CE(f(x_i), neighbour(x_i))``): the request
  search (``dormant.attacks.request_search``) ranks candidates by it.
"""

from __future__ import annotations

import torch
from torch import nn

from dormant.attacks.triggers import Trigger
from dormant.engine import to_float
from dormant.engine.grads import per_sample_grads
from dormant.errors import DormantError

CHUNK = 256


def _flat(grads: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([g.flatten(1) for g in grads.values()], dim=1)


def backdoor_gradient(model: nn.Module, x: torch.Tensor, trigger: Trigger, target: int
                      ) -> torch.Tensor:
    """grad of mean CE(f(stamp(x)), target) over uint8 images ``x``, flattened."""
    if len(x) == 0:
        raise DormantError("the attacker holds no held-out image outside the target class to "
                           "measure its backdoor on; raise public")
    total = None
    for s in range(0, len(x), CHUNK):
        xb = to_float(trigger.stamp(x[s : s + CHUNK]))
        yb = torch.full((len(xb),), target, dtype=torch.long, device=xb.device)
        g = _flat(per_sample_grads(model, xb, yb)).sum(0)
        total = g if total is None else total + g
    return total / max(1, len(x))


def alignment(model: nn.Module, x: torch.Tensor, labels: torch.Tensor, reference: torch.Tensor,
              *, stamp: Trigger | None = None) -> torch.Tensor:
    """Per uint8 image ``x[i]``: <grad CE(f(x_i), labels_i), reference>, with ``stamp``'s
    trigger applied first when given. On the CPU."""
    out = []
    for s in range(0, len(x), CHUNK):
        xb = x[s : s + CHUNK]
        xb = to_float(stamp.stamp(xb) if stamp is not None else xb)
        g = _flat(per_sample_grads(model, xb, labels[s : s + CHUNK].to(xb.device)))
        out.append((g @ reference.to(g.dtype)).cpu())
    return torch.cat(out) if out else torch.zeros(0)


def choose_poisons(model: nn.Module, x: torch.Tensor, y: torch.Tensor, candidates: torch.Tensor,
                   reference_x: torch.Tensor, trigger: Trigger, target: int,
                   per_class: dict[int, int]) -> torch.Tensor:
    """Of ``candidates`` (ids into ``x, y``), the ``per_class[c]`` images of each class ``c``
    whose stamped, target-labelled training step lowers the backdoor loss on
    ``reference_x`` most, by the clean surrogate ``model``. Sorted ids."""
    ref = backdoor_gradient(model, reference_x, trigger, target)
    dev = x.device
    cand = candidates.to(dev)
    labels = torch.full((len(cand),), target, dtype=torch.long, device=dev)
    score = alignment(model, x[cand], labels, ref, stamp=trigger)
    picked = []
    y_c = y[cand].cpu()
    for c, n in per_class.items():
        mine = torch.nonzero(y_c == c).flatten()
        picked.append(candidates.cpu()[mine[torch.argsort(score[mine], descending=True)[:n]]])
    return torch.sort(torch.cat(picked)).values
