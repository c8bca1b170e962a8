"""U-LiRA (Hayes et al., "Inexact unlearning needs more careful evaluations to avoid a false
sense of privacy", SaTML 2025): can a per-example likelihood-ratio test tell a model that
*unlearned* an example from one *retrained* without it?

The design is the efficient variant's: N shadow splits of a pool (each pool example in for
exactly half, as for LiRA; the originals are LiRA's shadows, from the same cache) and a fixed
set of candidates. Split m's original trains on its half; its forget set is the candidates in
that half; the method unlearns them (U_m) and a reference retrains without them (R_m, the
same recipe, its own seed). Per candidate, Gaussians are fitted to its logit-scaled
confidence under the unlearned models that forgot it and under the retrained models that never
trained on it. Each split in turn is the target (leave-one-out: the fits use the others):
its forgotten candidates under U_t are the positives, the same candidates under R_t the
negatives. AUC 0.5 means unlearning is indistinguishable from retraining.

``retrain`` as the method retrains with its own randomness, so its AUC is 0.5 up to noise.
The same pairs give SVC's MIA AUC (the population attack of the study's tables) for U_t and
R_t, and LiRA on the retain examples before and after unlearning: Hayes et al. found that
unlearning can expose the examples it kept."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from dormant.engine import Recipe
from dormant.engine.group import fit_group
from dormant.experiments.shadows import phis, shadow_key, shadow_seed, train_shadows
from dormant.metrics.lira import (
    PER_EXAMPLE_VARIANCE_FROM,
    fit_gaussians,
    lira_scores,
    membership,
    roc_summary,
)
from dormant.metrics.mia import svc_mia_auc
from dormant.models import ModelSpec, create_model
from dormant.store.cache import ModelCache, cache_key
from dormant.unlearn import UnlearnContext, UnlearnData, method_provenance, unlearn


@dataclass(frozen=True)
class Splits:
    """What every method shares: the pool, the in/out matrix, the candidates, each split's
    forget set, and the original and retrained models. ``base`` ids (into the same images as
    the pool) are in every original's training set: a study's retain set."""

    pool: torch.Tensor
    keep: np.ndarray  # (models, pool)
    candidates: np.ndarray  # positions in the pool
    forgets: list[np.ndarray]  # per split: positions in the pool
    originals: list[nn.Module]
    retrained: list[nn.Module]
    base: torch.Tensor | None = None
    watch: np.ndarray | None = None
    """Pool positions a stopping rule may watch (a study's leakable ids), never the scored
    candidates; None: the split's forget set."""

    def forget_ids(self, m: int) -> torch.Tensor:
        return self.pool[torch.as_tensor(self.forgets[m], dtype=torch.long)]

    def retain_ids(self, m: int) -> torch.Tensor:
        """Split m's training set less its forget set: what its retrained reference trains
        on."""
        kept = self.pool[torch.as_tensor(retained(self.keep[m], self.forgets[m]))]
        return kept if self.base is None else torch.cat([self.base, kept])


def retained(keep_row: np.ndarray, forget: np.ndarray) -> np.ndarray:
    return np.setdiff1d(np.flatnonzero(keep_row), forget)


def splits(x: torch.Tensor, y: torch.Tensor, pool: torch.Tensor, spec: ModelSpec,
           recipe: Recipe, *, models: int, candidates: int, seed: int, cache: ModelCache,
           fingerprint: str) -> Splits:
    """Hayes et al.'s efficient design: the originals (LiRA's shadows, on random halves of
    ``pool``), ``candidates`` pool examples drawn at random, each split's forget set (the
    candidates in its half) and a reference retrained without it."""
    keep = membership(models, len(pool), seed)
    cand = np.sort(np.random.default_rng(seed + 1).choice(len(pool), candidates, replace=False))
    originals = train_shadows(x, y, pool, keep, spec, recipe, seed=seed, cache=cache,
                              fingerprint=fingerprint)
    s = Splits(pool, keep, cand, [cand[keep[m, cand]] for m in range(models)], originals, [])
    return with_references(s, x, y, spec, recipe, seed=seed, cache=cache,
                           fingerprint=fingerprint)


def with_references(s: Splits, x: torch.Tensor, y: torch.Tensor, spec: ModelSpec,
                    recipe: Recipe, *, seed: int, cache: ModelCache, fingerprint: str,
                    progress=None) -> Splits:
    """``s`` with each split's reference retrained without its forget set, with its own seed
    (cached); a split that forgets nothing is its own reference, since its original never
    trained on a forgotten example."""
    todo = [m for m in range(len(s.originals)) if len(s.forgets[m])]
    ids = {m: s.retain_ids(m) for m in todo}
    seeds = {m: shadow_seed(seed + 7, m) for m in todo}  # not the originals' seeds
    keys = [shadow_key(fingerprint, spec, recipe, ids[m], seeds[m]) for m in todo]

    def train(positions: list[int]) -> list[nn.Module]:
        chosen = [todo[i] for i in positions]
        out = [create_model(spec, seed=seeds[m]) for m in chosen]
        fit_group(out, x, y, [ids[m] for m in chosen], recipe,
                  generators=[torch.Generator().manual_seed(seeds[m]) for m in chosen],
                  progress=progress, label="retrained references")
        return out

    built = cache.build_models(keys, spec, x.device, train, {"kind": "retrained"})
    retrained = list(s.originals)
    for m, model in zip(todo, built, strict=True):
        retrained[m] = model
    return dataclasses.replace(s, retrained=retrained)


Stage = tuple[str, dict]
"""A method and the keyword arguments ``unlearn`` takes for it (``{"preset": ...}`` or the
resolved hyper-parameters): a pipeline is a list of stages, each from the last one's model."""


def unlearned(s: Splits, x: torch.Tensor, y: torch.Tensor, spec: ModelSpec, recipe: Recipe,
              stages: list[Stage], num_classes: int, *, seed: int, cache: ModelCache,
              fingerprint: str, progress=None) -> list[nn.Module]:
    """U_m for every split: the ``stages`` applied to original m on its forget set, in turn
    (cached; no stage at all is the original itself)."""
    out = []
    for m, original in enumerate(s.originals):
        if not stages or not len(s.forgets[m]):  # nothing to forget: the original itself
            out.append(original)
            continue
        forget, retain = s.forget_ids(m), s.retain_ids(m)
        unlearn_seed = shadow_seed(seed + 13, m)  # retrain as a method: its own randomness
        # the original's own key (its exact ids and seed) and the retain set: two designs that
        # share a forget list never share an unlearned model
        own = _original_ids(s, m)
        key = cache_key(kind="ulira-unlearned", stages=[[n, kw, method_provenance(n, kw)]
                                                        for n, kw in stages],
                        forget=forget.tolist(), retain=retain.tolist(),
                        original=shadow_key(fingerprint, spec, recipe, own,
                                            shadow_seed(seed, m)),
                        unlearn_seed=unlearn_seed,
                        watch=None if s.watch is None else
                        s.pool[torch.as_tensor(s.watch)].tolist())

        def run(original=original, forget=forget, retain=retain, unlearn_seed=unlearn_seed):
            # a stopping rule watches the leakable ids, as the study's own cell does
            watched = forget if s.watch is None else s.pool[torch.as_tensor(s.watch)]
            data = UnlearnData(x, y, forget.to(x.device), retain.to(x.device),
                               watched.to(x.device), num_classes)
            ctx = UnlearnContext(recipe, lambda s=None, u=unlearn_seed: create_model(
                spec, seed=u if s is None else s), unlearn_seed, progress)
            model = original
            ctx = dataclasses.replace(ctx, pretrained=original)
            for name, kw in stages:
                model = unlearn(name, model, data, ctx, **kw)
            return model, {}

        model, _ = cache.build_model(key, spec, x.device, run,
                                     {"kind": "ulira-unlearned",
                                      "method": "+".join(n for n, _ in stages)})
        out.append(model)
    return out


def _original_ids(s: Splits, m: int) -> torch.Tensor:
    """What original m trained on, as ``train_shadows`` keyed it."""
    half = s.pool[torch.as_tensor(s.keep[m])]
    return half if s.base is None else torch.cat([s.base, half])


def _global(models: int) -> bool:
    """The variance rule of a design of ``models`` shadows, for every fit in it: a fit that
    leaves one model out must not switch rules at the threshold."""
    return models < PER_EXAMPLE_VARIANCE_FROM


def _fit_leave_one_out(phi: np.ndarray, include: np.ndarray, t: int):
    """Gaussians per candidate from every model but ``t`` where ``include`` (models x
    candidates); returned as (mean, std) arrays over candidates (and queries)."""
    others = np.arange(len(phi)) != t
    fit = fit_gaussians(phi[others], include[others], _global(len(phi)))
    return fit.mean_in, fit.std_in


def ulira(s: Splits, u_models: list[nn.Module], x: torch.Tensor, y: torch.Tensor,
          recipe: Recipe, test: tuple[torch.Tensor, torch.Tensor] | None = None, *,
          r_models: list[nn.Module] | None = None, exposure: bool = True) -> dict:
    """AUC and accuracy of the U_t-versus-R_t likelihood-ratio test over every split and
    forgotten candidate, the per-candidate scores, SVC's AUC on the same pairs (when ``test``
    images are given) and the retain examples' LiRA exposure before and after unlearning
    (``exposure``). ``r_models`` stand in for the retrained references (the same references
    after an attack, beside ``u_models`` after the same attack)."""
    from dormant.metrics.lira import Fit

    n = len(s.originals)
    r_models = s.retrained if r_models is None else r_models
    cand_ids = s.pool[torch.as_tensor(s.candidates)]
    phi_u = phis(u_models, x, y, cand_ids, recipe)  # (models, candidates, queries)
    phi_r = phis(r_models, x, y, cand_ids, recipe)
    forgot = s.keep[:, s.candidates]  # U_m forgot candidate c iff c was in its half
    pos, neg, per_candidate = [], [], [[] for _ in s.candidates]
    for t in range(n):
        mu_u, sd_u = _fit_leave_one_out(phi_u, forgot, t)
        # R_m never trained on a candidate: every other split's reference counts
        mu_r, sd_r = _fit_leave_one_out(phi_r, np.ones_like(forgot), t)
        fit = Fit(mu_u, mu_r, sd_u, sd_r, _global(n), n - 1)
        su = lira_scores(phi_u[t], fit)
        sr = lira_scores(phi_r[t], fit)
        for c in np.flatnonzero(forgot[t]):
            pos.append(su[c])
            neg.append(sr[c])
            per_candidate[c].append(float(su[c] - sr[c]))
    pos, neg = np.array(pos), np.array(neg)
    out = {"pairs": len(pos), "models": n, "candidates": len(s.candidates),
           **{k: v for k, v in roc_summary(pos, neg).items()
              if k in ("auc", "tpr_at_1pct")},
           "accuracy": float(((pos > 0).sum() + (neg <= 0).sum()) / (2 * len(pos))),
           "candidate_score_gap": [float(np.mean(v)) if v else None for v in per_candidate]}
    if test is not None:
        out["svc_auc_unlearned"], out["svc_auc_retrained"] = _svc(s, u_models, x, y, test)
    if exposure:
        out["retain_exposure"] = _retain_exposure(s, u_models, x, y, recipe)
    return out


def _svc(s: Splits, u_models, x, y, test) -> tuple[float, float]:
    """SVC's MIA AUC (the study's population attack) of each split's forget set against test
    images, for U_t and R_t, averaged over the splits."""
    xt, yt = test
    half = len(yt) // 2
    shadow_out, eval_out = torch.arange(half), torch.arange(half, len(yt))
    aucs = {"u": [], "r": []}
    for t in range(len(s.originals)):
        forget, retain = s.forget_ids(t), s.retain_ids(t)
        for k, m in (("u", u_models[t]), ("r", s.retrained[t])):
            aucs[k].append(svc_mia_auc(m, x, y, retain, xt, yt, shadow_out, forget,
                                       eval_out, seed=t))
    return float(np.mean(aucs["u"])), float(np.mean(aucs["r"]))


def _retain_exposure(s: Splits, u_models, x, y, recipe: Recipe) -> dict:
    """LiRA (online, the originals as shadows, leave-one-out) on each split's retained pool
    examples against its pool examples out of training (candidates left out), for the
    original O_t and for U_t: AUC and TPR at 1% FPR over the splits that forgot something."""
    forgotten = np.concatenate([s.candidates, *s.forgets]).astype(int)
    non_cand = np.setdiff1d(np.arange(len(s.pool)), forgotten)
    ids = s.pool[torch.as_tensor(non_cand)]
    keep = s.keep[:, non_cand]
    phi_o = phis(s.originals, x, y, ids, recipe)
    phi_u = phis(u_models, x, y, ids, recipe)
    scores = {"before": ([], []), "after": ([], [])}
    # a split that forgot nothing has U = O: it would only pull "after" towards "before"
    for t in [t for t in range(len(s.originals)) if len(s.forgets[t])]:
        others = np.arange(len(keep)) != t
        fit = fit_gaussians(phi_o[others], keep[others], _global(len(keep)))
        for k, phi in (("before", phi_o[t]), ("after", phi_u[t])):
            sc = lira_scores(phi, fit)
            scores[k][0].append(sc[keep[t]])
            scores[k][1].append(sc[~keep[t]])
    out = {}
    for k, (mem, non) in scores.items():
        r = roc_summary(np.concatenate(mem), np.concatenate(non))
        out[k] = {"auc": r["auc"], "tpr_at_1pct": r["tpr_at_1pct"]}
    return out
