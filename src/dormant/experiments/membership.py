"""Per-example membership inference inside the relearning study (``mia: [lira, rmia, ulira]``
with ``shadows: N``), one design per prepared seed, shared by every method and cell.

The audited examples, the *pool*, are the forget set (the held-out split is scored) and as
many test images as it has held-out ids. N shadow models train on the retain set plus part
of the pool, and come from the model cache: every method, cell and later study on the same
seed reuses them.

- The forget set is in or out *as a whole*: exactly half the shadows train on all of it, as
  the original did, and half on none of it, as the oracle did. Forget sets are coherent
  groups (a class's atypical images, a class): a shadow trained on half of them would know
  the other half from their neighbours, and the oracle, which saw none, would then read as
  far *less* member-like than unseen data.
- Each test image of the pool is in for a random half of the shadows, as LiRA's design has
  it.

From them:

- **LiRA** (online, ``dormant.metrics.lira``) scores each pool example against a model (the
  unlearned one, and the same after the attack): AUC and TPR at 1% FPR of the held-out
  forget split against the test images. The oracle trained on neither, so its AUC is about
  0.5; the original's is what there was to forget; far below 0.5 is as telling as far above
  (forgotten examples that look *less* seen than unseen ones). Per-example calibration
  removes the population attacks' caveat that atypical forget images look less member-like
  than test images.
- **RMIA** (offline, one OUT reference model per example, ``dormant.metrics.rmia``) on the
  same examples: the cheap fallback.
- **U-LiRA** (``dormant.experiments.ulira``): each shadow that trained on the forget set is
  an original; the pipeline's own stages, with their resolved hyper-parameters, unlearn the
  forget set from it, and a reference retrains without it (the shadows that never had it
  are references as they are). AUC of telling the unlearned from the retrained models per
  held-out example, after unlearning and after the cell's attack (both sides attacked
  alike), and the NeurIPS 2023 challenge's score on the same pairs.

With fewer than 64 shadows every Gaussian has one global variance (LiRA's advice for few
shadows), from 64 on each example its own; every row says which and how many shadows."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from dormant.engine import Recipe, evaluate, predict
from dormant.experiments.prepare import Prepared
from dormant.experiments.shadows import phis, train_shadows
from dormant.experiments.ulira import Splits, Stage, ulira, unlearned, with_references
from dormant.metrics.challenge import challenge_score, forgetting_quality
from dormant.metrics.lira import Fit, fit_gaussians, lira_scores, membership, roc_summary
from dormant.metrics.rmia import rmia_scores
from dormant.models import ModelSpec
from dormant.store import ModelCache

PER_EXAMPLE = ("lira", "rmia", "ulira")
"""The ``mia`` entries that need shadow models; ``loss`` and ``svc`` are population attacks
of the analysis (``dormant.experiments.analysis``)."""
POPULATION = 1000
"""RMIA's population examples z: test images outside the pool, at most this many."""


@dataclass(frozen=True)
class Design:
    """One prepared seed's audit: the images (training then test, on the device), the pool
    and who in it is a forget example, the shadows and their fits."""

    x: torch.Tensor
    y: torch.Tensor
    pool: torch.Tensor
    forget: np.ndarray  # bool over the pool: the held-out forget split (the scored ids)
    population: torch.Tensor  # test images outside the pool (RMIA's z, utility)
    splits: Splits
    fit: Fit
    lira_null: np.ndarray  # LiRA scores of the scored ids under each shadow without them
    rmia_null: np.ndarray  # the same for RMIA
    probs: np.ndarray  # (shadows, pool + population): true-label probabilities
    reference: int  # RMIA's one reference model: a shadow that never had the forget set
    recipe: Recipe
    fingerprint: str

    @property
    def shadows(self) -> int:
        return len(self.splits.originals)

    def labels(self) -> dict:
        return {"mia_shadows": self.shadows,
                "mia_variance": "global" if self.fit.global_variance else "per-example"}


def _fingerprint(data: str, y_train: torch.Tensor, y_test: torch.Tensor) -> str:
    """The images and labels the shadows see (a canary study relabels some)."""
    h = hashlib.sha256(data.encode())
    for y in (y_train, y_test):
        h.update(np.asarray(y.cpu(), dtype=np.int64).tobytes())
    return "study-mia:" + h.hexdigest()[:24]


def design(prep: Prepared, shadows: int, cache: ModelCache, progress=None) -> Design:
    """The study seed's design (:func:`audit_design` on its split)."""
    return audit_design(prep.x, prep.y, prep.x_test, prep.y_test, prep.split.retain,
                        prep.split.heldout, prep.split.leakable, prep.spec, prep.recipe,
                        shadows=shadows, seed=prep.seed, cache=cache,
                        fingerprint=_study_fingerprint(prep), progress=progress)


@dataclass(frozen=True)
class _Layout:
    """Where everything sits: the images (training then test), the pool, who trains on what
    and the seed; what :func:`audit_design` and :func:`train_part` agree on."""

    x: torch.Tensor
    y: torch.Tensor
    pool: torch.Tensor
    group: np.ndarray  # bool over the pool: the forget set (held-out, then leakable)
    heldout: int
    keep: np.ndarray
    coin: np.ndarray  # per shadow: trained on the forget set
    base: torch.Tensor
    population: torch.Tensor


def _layout(x_train, y_train, x_test, y_test, retain, heldout, leakable, shadows: int,
            seed: int) -> _Layout:
    n = len(y_train)
    x = torch.cat([x_train, x_test])
    y = torch.cat([y_train, y_test])
    heldout, leakable = heldout.to(x.device), leakable.to(x.device)
    g = torch.Generator().manual_seed(seed + 4_099)
    order = torch.randperm(len(y_test), generator=g).to(x.device) + n
    outside = order[:len(heldout)]
    pool = torch.cat([heldout, leakable, outside])
    group = np.r_[np.ones(len(heldout) + len(leakable), bool), np.zeros(len(outside), bool)]
    keep = membership(shadows, len(pool), seed)  # test images: each its own halves
    coin = membership(shadows, 1, seed + 1)[:, 0]  # the forget set: all or nothing
    keep[:, group] = coin[:, None]
    return _Layout(x, y, pool, group, len(heldout), keep, coin, retain.to(x.device),
                   order[len(heldout):len(heldout) + POPULATION])


def train_part(prep: Prepared, shadows: int, part: list[int], cache: ModelCache,
               progress=None) -> None:
    """Train shadows ``part`` of the study seed's design into ``cache``: a worker's share,
    so that a study's workers train a seed's shadows side by side."""
    lay = _study_layout(prep, shadows)
    train_shadows(lay.x, lay.y, lay.pool, lay.keep, prep.spec, prep.recipe, seed=prep.seed,
                  cache=cache, fingerprint=_study_fingerprint(prep), base=lay.base,
                  only=part, progress=progress)


def _study_layout(prep: Prepared, shadows: int) -> _Layout:
    return _layout(prep.x, prep.y, prep.x_test, prep.y_test, prep.split.retain,
                   prep.split.heldout, prep.split.leakable, shadows, prep.seed)


def _study_fingerprint(prep: Prepared) -> str:
    return _fingerprint(prep.dataset.fingerprint, prep.y, prep.y_test)


def audit_design(x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor,
                 y_test: torch.Tensor, retain: torch.Tensor, heldout: torch.Tensor,
                 leakable: torch.Tensor, spec: ModelSpec, recipe: Recipe, *, shadows: int,
                 seed: int, cache: ModelCache, fingerprint: str, progress=None) -> Design:
    """The pool (``heldout`` and ``leakable`` as one forget group, and as many test images as
    ``heldout``), ``shadows`` models on ``retain`` and their part of it (from ``cache``),
    their fits and the nulls."""
    lay = _layout(x_train, y_train, x_test, y_test, retain, heldout, leakable, shadows, seed)
    x, y, pool, keep = lay.x, lay.y, lay.pool, lay.keep
    models = train_shadows(x, y, pool, keep, spec, recipe, seed=seed, cache=cache,
                           fingerprint=fingerprint, base=lay.base, progress=progress)
    phi = phis(models, x, y, pool, recipe)
    fit = fit_gaussians(phi, keep)
    forget = np.arange(len(pool)) < lay.heldout
    s = Splits(pool, keep, np.flatnonzero(forget),
               [np.flatnonzero(lay.group) if c else np.zeros(0, int) for c in lay.coin],
               models, [], lay.base,
               watch=np.flatnonzero(lay.group & ~forget))  # the leakable ids, never scored
    probs = np.stack([_true_prob(m, x, y, torch.cat([pool, lay.population]))
                      for m in models])
    outs = np.flatnonzero(~lay.coin)
    ref, others = outs[0], outs[1:]
    # the null: each shadow that never had the forget set, scored as a target would be,
    # against fits without it (LiRA) or against the reference (RMIA)
    lira_null = np.concatenate([
        lira_scores(phi[j], fit_gaussians(np.delete(phi, j, 0), np.delete(keep, j, 0),
                                          fit.global_variance))[forget]
        for j in outs])
    rmia_null = np.concatenate([_rmia(probs[j], probs[ref], forget) for j in others])
    return Design(x, y, pool, forget, lay.population, s, fit, lira_null, rmia_null, probs,
                  ref, recipe, fingerprint)


def _rmia(target: np.ndarray, ref: np.ndarray, forget: np.ndarray) -> np.ndarray:
    """RMIA scores of the scored ids, from true-label probabilities over pool + population."""
    n = len(forget)
    return rmia_scores(target[:n][forget], ref[:n][forget], target[n:], ref[n:])


def _true_prob(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
               ids: torch.Tensor) -> np.ndarray:
    """The softmax probability of the true label of ``x[ids]`` (RMIA's signal)."""
    p = torch.softmax(predict(model, x, ids).double(), -1)
    return p.gather(1, y[ids].unsqueeze(1)).squeeze(1).cpu().numpy()


def lira_columns(d: Design, model: nn.Module, recipe, kinds: list[str],
                 suffix: str = "") -> dict:
    """LiRA's (and RMIA's) AUC and TPR at 1% FPR of ``model``'s scores on the held-out
    forget ids against the same ids' scores under the shadows that never trained on the
    forget set (the null: 0.5 reads "as if never trained on them", 1 "as the original",
    below 0.5 "less than never seen"); LiRA's per-example scores of the forget ids."""
    out: dict = {}
    if "lira" in kinds:
        s = lira_scores(phis([model], d.x, d.y, d.pool, recipe)[0], d.fit)[d.forget]
        r = roc_summary(s, d.lira_null)
        out |= {f"lira_auc{suffix}": round(r["auc"], 4),
                f"lira_tpr_at_1pct{suffix}": round(r["tpr_at_1pct"], 4),
                f"lira_forget_scores{suffix}": [round(float(v), 3) for v in s]}
    if "rmia" in kinds:
        p = _true_prob(model, d.x, d.y, torch.cat([d.pool, d.population]))
        r = roc_summary(_rmia(p, d.probs[d.reference], d.forget), d.rmia_null)
        out |= {f"rmia_auc{suffix}": round(r["auc"], 4),
                f"rmia_tpr_at_1pct{suffix}": round(r["tpr_at_1pct"], 4)}
    return out


def references(d: Design, prep: Prepared, cache: ModelCache, progress=None) -> Splits:
    """``d``'s splits with their retrained references (trained once per seed, cached)."""
    return with_references(d.splits, d.x, d.y, prep.spec, d.recipe, seed=prep.seed,
                           cache=cache, fingerprint=d.fingerprint, progress=progress)


def ulira_models(d: Design, prep: Prepared, stages: list[Stage], cache: ModelCache,
                 progress=None) -> tuple[Splits, list[nn.Module]]:
    s = references(d, prep, cache, progress)
    u = unlearned(s, d.x, d.y, prep.spec, prep.recipe, stages, prep.dataset.num_classes,
                  seed=prep.seed, cache=cache, fingerprint=d.fingerprint,
                  progress=progress)
    return s, u


def ulira_columns(d: Design, prep: Prepared, s: Splits, u: list[nn.Module],
                  r: list[nn.Module] | None = None, suffix: str = "") -> dict:
    """U-LiRA's AUC and accuracy over the splits (``r``: the references, by default the
    retrained ones), and, from the same pairs, the challenge's forgetting quality and score."""
    res = ulira(s, u, d.x, d.y, prep.recipe, r_models=r, exposure=not suffix)
    out = {f"ulira_auc{suffix}": round(res["auc"], 4),
           f"ulira_accuracy{suffix}": round(res["accuracy"], 4)}
    if not suffix:
        out["ulira_retain_exposure"] = res["retain_exposure"]
        # per held-out id: its mean score gap, unlearned minus retrained (> 0: the unlearned
        # model gives it away), the distribution the report plots
        out["ulira_forget_gaps"] = [None if g is None else round(g, 3)
                                    for g in res["candidate_score_gap"]]
        out |= challenge_columns(d, prep, s, u, r or s.retrained)
    return out


def challenge_columns(d: Design, prep: Prepared, s: Splits, u: list[nn.Module],
                      r: list[nn.Module]) -> dict:
    cand = d.pool[torch.as_tensor(s.candidates)]
    phi_u = phis(u, d.x, d.y, cand, prep.recipe)[..., 0]  # the identity query
    phi_r = phis(r, d.x, d.y, cand, prep.recipe)[..., 0]
    forgot = s.keep[:, s.candidates]
    q = forgetting_quality([phi_u[forgot[:, c], c] for c in range(len(s.candidates))],
                           [phi_r[forgot[:, c], c] for c in range(len(s.candidates))])

    def mean_acc(models: list[nn.Module], ids_of) -> float:
        return float(np.mean([evaluate(m, d.x, d.y, ids_of(i)).acc
                              for i, m in enumerate(models)]))

    # the pairs only: a split that forgot nothing has the same model on both sides
    pairs = [i for i in range(len(u)) if len(s.forgets[i])]
    u, r = [u[i] for i in pairs], [r[i] for i in pairs]
    retain_u = mean_acc(u, lambda i: s.retain_ids(pairs[i]))
    retain_r = mean_acc(r, lambda i: s.retain_ids(pairs[i]))
    test_u = mean_acc(u, lambda _: d.population)
    test_r = mean_acc(r, lambda _: d.population)
    return {"forgetting_quality": round(q["quality"], 4),
            "challenge_score": round(challenge_score(q["quality"], retain_u, retain_r,
                                                     test_u, test_r), 4),
            "challenge_models": q["models"]}
