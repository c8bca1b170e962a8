"""The measurements taken before and after a deletion request: utility, forgetting, the
relearning attack on the new model (and on a retrain oracle, attacked the same way), and the
differential backdoor profile of both models.

Everything here measures; the tamper test's verdict word comes from
``dormant.experiments.verdicts.classify`` (the one place its rules live) and the pass / warn
/ fail of each check from ``policy.judge``. The result is the ``measurements`` record every
part of the request pipeline agrees on: plain floats and lists, ``None`` where a number cannot
exist (a class every defender image already goes to, a tamper test without an oracle).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from pydantic import Field, ValidationError, model_validator
from torch import nn

from dormant import plugins
from dormant.attacks import RelearnConfig, RelearnData, relearn
from dormant.defenses.neural_cleanse import PRESETS as NC_PRESETS
from dormant.defenses.neural_cleanse import NeuralCleanseConfig, reverse_triggers
from dormant.defenses.registry import under
from dormant.defenses.universal_targets import TargetedUAPConfig, targeted_success
from dormant.engine import Progress, Recipe, evaluate
from dormant.errors import DormantError
from dormant.experiments.verdicts import classify
from dormant.metrics import aurc, end_mean, recovery, svc_mia_auc
from dormant.models import ModelSpec
from dormant.settings import Settings, one_line

DIGITS = 4  # rounding of the record: far below any threshold, and stable across runs


@one_line("check budget")
class CheckBudget(Settings):
    """What the checks spend. The defaults are sized for a CPU and small images (a request on
    MNIST ``cnn-small`` checks in minutes); a policy raises them for real models.

    ``relearn_*``: the relearning attack on the new model (Adam with cosine decay to lr / 10,
    as the seed paper's attack; 100 steps instead of its 3,910). ``leaked_k``: the k-leaked
    variant (0 disables it). ``defender_images``: the clean test images the backdoor checks
    use: Neural Cleanse (``nc``, the defense's own config: its ``cpu`` preset, the backdoor
    study's budget, reversing on the first ``nc.images`` of them) and the targeted universal
    perturbations (``uap``). A partial ``nc``/``uap`` mapping is layered over those defaults.
    ``mia_size``: the most test images the MIA scores against.

    The tamper verdict compares with a retrain oracle attacked the same way (same budget,
    seed and leaked ids). For ``retrain`` the new model is that oracle and nothing more runs;
    for an approximate method a request also pays one retrain on the retain set (a training
    run of the original's recipe) and the attacks on it (the attack cost twice)."""

    relearn_steps: int = Field(100, ge=1)
    relearn_lr: float = Field(1e-4, gt=0)
    relearn_batch: int = Field(128, ge=1)
    leaked_k: int = Field(5, ge=0)
    """0 disables the k-leaked variant."""
    eval_every: int = Field(10, ge=1)
    defender_images: int = Field(200, ge=2)
    nc: NeuralCleanseConfig = NC_PRESETS["cpu"]
    uap: TargetedUAPConfig = TargetedUAPConfig()
    mia_size: int = Field(1000, ge=1)
    min_heldout: int = Field(20, ge=1)
    """The fewest held-out ids on which forget accuracy, the MIA and the tamper excess can
    decide anything: with n ids one id moves forget accuracy by 100/n points, and at 20 that
    is 5 points, the tightest default warn level (``excess``, ``forget_gap``). Below it those
    checks say ``insufficient evidence`` and warn (a request of 25 ids holds out 20)."""
    seed: int = 0
    lira_shadows: int = Field(0, ge=0, le=256)
    """Shadow models for the per-example LiRA check (``lira_auc``); 0, the default, turns it
    off. It trains this many models with the original's recipe per request (the forget set
    in half of them, as a whole), in a temporary folder removed when the check ends: they
    trained on the deleted ids, so none is kept in the store or the cache. At least 4; 16
    is LiRA's usual small budget."""

    @model_validator(mode="after")
    def _enough_shadows(self):
        if 0 < self.lira_shadows < 4:
            raise ValueError(f"lira_shadows {self.lira_shadows}: use 0 (off) or at least 4")
        return self

    @model_validator(mode="before")
    @classmethod
    def _layered(cls, data):
        # ``nc: {epochs: 5}`` keeps the rest of the default budget (the cpu preset)
        if not isinstance(data, dict):
            return data
        out = dict(data)
        for name in ("nc", "uap"):
            given = data.get(name)
            if isinstance(given, dict):
                base = cls.model_fields[name].default.model_dump()
                try:
                    out[name] = type(cls.model_fields[name].default).model_validate(
                        {**base, **given})
                except ValidationError as e:
                    raise under(name, e) from None
        return out


@dataclass(frozen=True)
class RequestData:
    """The tensors of one request: training images (uint8, on the device) and labels, the
    test set, and id sets into the training images. ``heldout``: where forget accuracy and
    the MIA are measured; ``leakable``: what the k-leaked attacker may add; ``retain``: ids
    never deleted, the attacker's fine-tuning set. ``recipe`` is the original's training
    recipe (the attack reuses its augmentation)."""

    x: torch.Tensor
    y: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    heldout: torch.Tensor
    leakable: torch.Tensor
    retain: torch.Tensor
    recipe: Recipe
    num_classes: int
    spec: ModelSpec | None = None
    """The model's architecture: the LiRA check trains shadows of it."""

    def __post_init__(self) -> None:
        if len(self.heldout) == 0:
            raise DormantError("the request has no held-out ids to measure forgetting on")
        if len(self.retain) == 0:
            raise DormantError("the request leaves no retained ids to fine-tune on")
        if len(self.y_test) < 2:
            raise DormantError("the checks need at least 2 test images")


def _num(v: float) -> float | None:
    return None if math.isnan(v) else round(float(v), DIGITS)


def _pick(n: int, size: int, seed: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:size]


def backdoor_profile(model: nn.Module, data: RequestData, budget: CheckBudget, *,
                     progress: Progress | None = None) -> dict:
    """Per class: Neural Cleanse's reversed-trigger L1 norm and the targeted universal
    perturbation's success (percent), on a seeded pick of ``defender_images`` clean test
    images. It depends only on the model and the budget, so a caller may cache it per model
    version."""
    ids = _pick(len(data.y_test), budget.defender_images, budget.seed).to(data.x_test.device)
    nc_ids = ids if budget.nc.images is None else ids[: budget.nc.images]
    nc = reverse_triggers(model, data.x_test, data.y_test, nc_ids, data.num_classes, budget.nc,
                          seed=budget.seed, progress=progress)
    uap = targeted_success(model, data.x_test, ids, data.num_classes, budget.uap,
                           seed=budget.seed, progress=progress)
    return {"nc_norms": [_num(v) for v in nc.norms.tolist()],
            "uap_success": [_num(v) for v in uap.tolist()]}


@dataclass(frozen=True)
class CheckInfo:
    """One check of a deletion request: its ``group`` (utility, forgetting, tamper, backdoor
    or a new one), its default ``warn``/``fail`` levels (a policy key of the same name moves
    them), ``judge(thresholds, measurements) -> list[Check]`` (``policy.Check``; none where
    the record has nothing to judge) and, optionally, ``measure(model, data, budget) ->
    dict``: values measured on the old and the new model alike, merged into the record's
    ``before`` and ``after``."""

    name: str
    group: str
    warn: float | None
    fail: float | None
    judge: Callable
    measure: Callable | None = None
    summary: str = ""


_CHECKS: dict[str, CheckInfo] = {}


def register_check(name: str, *, group: str, warn: float | None, fail: float | None,
                   measure: Callable | None = None) -> Callable[[Callable], Callable]:
    """Decorator: register ``judge(thresholds, measurements) -> list[Check]`` as check
    ``name`` (see :class:`CheckInfo`). Checks are judged in registration order."""
    def deco(fn: Callable) -> Callable:
        doc = (fn.__doc__ or "").strip().split("\n\n")[0]
        plugins.claim("checks", name, _CHECKS,
                      CheckInfo(name, group, warn, fail, fn, measure, " ".join(doc.split())),
                      fn.__module__)
        return fn

    return deco


def available_checks() -> list[str]:
    """Every registered check, in the order they are judged. The built-ins register in
    ``dormant.requests.policy``, which the package imports before any of its modules is
    used, so they are always there (this module imports nothing of the policy's); plugins'
    register on the first call."""
    plugins.load()
    return list(_CHECKS)


def get_check(name: str) -> CheckInfo:
    if name not in available_checks():
        raise DormantError(f"unknown check {name!r}; choose one of: "
                           f"{', '.join(available_checks())}")
    plugins.refuse_clash("checks", name)
    return _CHECKS[name]


KNOWN = ("nc_norms", "uap_success", "retain_acc", "test_acc")
"""What ``model_state`` may be given instead of measuring it: the backdoor profile (it depends
only on the model and the budget) and, within one batch of requests, whose retain set is one,
the retain and test accuracy."""


def model_state(model: nn.Module, data: RequestData, budget: CheckBudget, *,
                known: dict | None = None, progress: Progress | None = None) -> dict:
    """Retain, test and held-out forget accuracy (percent), the SVC MIA AUC of the held-out
    ids against unseen test images, and the backdoor profile; ``known`` (keys of
    :data:`KNOWN`) holds values already measured on this model, which are not measured
    again."""
    known = dict(known or {})
    # the MIA scores against a seeded pick of test images; the SVC learns "unseen" from the
    # other test images, so no test image is both a shadow and a scored one
    n_test = len(data.y_test)
    perm = _pick(n_test, n_test, budget.seed).to(data.x_test.device)
    n_eval = min(budget.mia_size, n_test // 2)
    mia = svc_mia_auc(model, data.x, data.y, data.retain, data.x_test, data.y_test,
                      perm[n_eval:], data.heldout, perm[:n_eval], seed=budget.seed)
    if "nc_norms" not in known or "uap_success" not in known:
        known.update(backdoor_profile(model, data, budget, progress=progress))
    if "retain_acc" not in known:
        known["retain_acc"] = _num(evaluate(model, data.x, data.y, data.retain).acc)
    if "test_acc" not in known:
        known["test_acc"] = _num(evaluate(model, data.x_test, data.y_test).acc)
    extra = {}
    for info in map(get_check, available_checks()):
        if info.measure is not None:
            extra.update(info.measure(model, data, budget))
    return {**extra,
        "retain_acc": known["retain_acc"],
        "test_acc": known["test_acc"],
        "forget_acc": _num(evaluate(model, data.x, data.y, data.heldout).acc),
        "mia_auc": _num(mia),
        "nc_norms": list(known["nc_norms"]),
        "uap_success": list(known["uap_success"]),
    }


SELF_ORACLE = "the new model (retrain)"
"""What a ``retrain`` request's tamper blocks name as their oracle: the new model, retrained
on the retain set with the original's recipe, is the retrain oracle itself."""
RETRAINED_ORACLE = "a retrain on the retain set (the original's recipe, init and seed)"
"""What an approximate method's tamper blocks name as their oracle."""
NO_ORACLE = "no oracle: no verdict"


@dataclass(frozen=True)
class Oracle:
    """The retrain reference a tamper verdict compares with. ``model``: a retrain on the
    request's retain set, attacked with the same budget and seed as the new model; ``None``
    when the new model is that retrain (``label`` is then :data:`SELF_ORACLE`)."""

    label: str
    model: nn.Module | None = None

    @classmethod
    def itself(cls) -> Oracle:
        return cls(SELF_ORACLE)


def _relearn_cfg(budget: CheckBudget, k: int) -> RelearnConfig:
    return RelearnConfig(k=k, steps=budget.relearn_steps, lr=budget.relearn_lr,
                         final_lr=budget.relearn_lr / 10, batch_size=budget.relearn_batch,
                         eval_every=budget.eval_every, test_every=budget.relearn_steps)


def _block(k: int, curve, forget_acc: list[float], start: float, start_test: float) -> dict:
    """One attack's record for one request: its held-out forget curve ``forget_acc`` (at
    ``curve.steps``) and the test curve, from ``start``. Recovery as in the study: the
    attack's best point (steps >= 1) minus the start; a column, not a verdict (it scores
    over-forgetting as relearning)."""
    best, end = max(forget_acc), end_mean(forget_acc)
    return {
        "k": k,
        "steps": [0, *curve.steps],
        "forget_acc": [_num(start), *map(_num, forget_acc)],
        "test_steps": [0, *curve.test_steps],
        "test_acc": [_num(start_test), *map(_num, curve.test_acc)],
        "start": _num(start),
        "best": _num(best),
        "end": _num(end),
        "recovery": _num(recovery(start, best)),
        "aurc": _num(aurc(curve.steps, forget_acc, start)),
    }


def _attack(model: nn.Module, datas: list[RequestData], budget: CheckBudget,
            leaked: torch.Tensor, starts: list[float], start_test: float,
            progress: Progress | None) -> list[dict]:
    """One relearning attack on ``model`` (retain set plus ``leaked``), followed on each
    request's held-out ids (``starts``: their accuracy before it): the attack depends only on
    the retain set and the leaked ids, so requests that share both share the attack."""
    first = datas[0]
    heldouts = tuple(d.heldout.to(first.x.device) for d in datas)
    rdata = RelearnData.build("retain", first.x, first.y, first.x_test, first.y_test,
                              first.retain, leaked, heldouts[0],
                              torch.unique(first.y[torch.cat(heldouts)]))
    _, curve = relearn(model, rdata, _relearn_cfg(budget, len(leaked)), first.recipe,
                       seed=budget.seed, progress=progress, groups=heldouts[1:])
    curves = [curve.forget_acc, *curve.groups]
    return [_block(len(leaked), curve, c, s, start_test)
            for c, s in zip(curves, starts, strict=True)]


def _attacks(model: nn.Module, datas: list[RequestData], budget: CheckBudget,
             progress: Progress | None) -> list[dict]:
    """Per request: the retain-only attack (``"k0"``), run once for the whole batch (the
    requests share their retain set), and, unless ``leaked_k`` is 0, the k-leaked one, which
    depends on each request's own leakable ids."""
    first = datas[0]
    starts = [evaluate(model, d.x, d.y, d.heldout).acc for d in datas]
    start_test = evaluate(model, first.x_test, first.y_test).acc
    k0 = _attack(model, datas, budget, first.heldout[:0], starts, start_test, progress)
    out = [{"k0": b} for b in k0]
    if budget.leaked_k > 0:
        for data, start, blocks in zip(datas, starts, out, strict=True):
            perm = _pick(len(data.leakable), budget.leaked_k, budget.seed).to(
                data.leakable.device)
            leaked = data.leakable[perm]
            blocks[f"k{budget.leaked_k}"] = blocks["k0"] if len(leaked) == 0 else _attack(
                model, [data], budget, leaked, [start], start_test, progress)[0]
    return out


def _diff(a, b) -> float | None:
    return None if a is None or b is None else round(a - b, DIGITS)


def _one_seed(gap: float, excess: float, exact: bool) -> str:
    """``verdicts.classify`` for one attack seed: no interval, so it never relearns nor
    resists (the policy's excess thresholds gate the request instead), except against
    itself, where the excess is exactly 0 by definition."""
    if exact:
        return classify(gap, excess, (0.0, 0.0), (0.0, 0.0))
    return classify(gap, excess, (math.nan, math.nan), (math.nan, math.nan))


def against(block: dict, ref: dict | None, label: str | None) -> dict:
    """``block`` (one attack on the new model) with the oracle's columns: ``oracle_start``,
    ``oracle_end``, ``excess`` (end minus the oracle's end), ``excess_max`` (best minus the
    oracle's best), ``forget_gap`` (start minus the oracle's start) and the ``verdict`` of
    ``verdicts.classify`` for one seed. ``ref`` is the oracle's block of the same k; ``None``
    with a ``label`` means the new model is the oracle (excess 0 by definition), ``None``
    without one that there is no oracle, hence no verdict."""
    out = dict(block)
    if ref is None and label is None:
        return {**out, "oracle": None, "oracle_start": None, "oracle_end": None,
                "oracle_best": None, "excess": None, "excess_max": None, "forget_gap": None,
                "verdict": None, "no_verdict": NO_ORACLE}
    ref = block if ref is None else ref
    gap, excess = _diff(block["start"], ref["start"]), _diff(block["end"], ref["end"])
    out.update(
        oracle=label, oracle_start=ref["start"], oracle_end=ref["end"], oracle_best=ref["best"],
        excess=excess, excess_max=_diff(block["best"], ref["best"]), forget_gap=gap,
        verdict=None if gap is None or excess is None else _one_seed(gap, excess, ref is block),
    )
    if ref is not block:  # the oracle's own curve, for the figure (same steps)
        out["oracle_forget_acc"] = list(ref["forget_acc"])
    return out


def tamper_test(model: nn.Module, data: RequestData, budget: CheckBudget, *,
                oracle: Oracle | None = None, progress: Progress | None = None) -> dict:
    """The relearning attack on ``model``: retain-only (``"k0"``) and, unless ``leaked_k`` is
    0, with the first ``leaked_k`` of a seeded permutation of the leakable ids added (key
    ``f"k{leaked_k}"``). With fewer leakable ids than ``leaked_k`` all of them are used, and
    the block's ``"k"`` says how many; with none, the leaked attack is the retain-only one.

    Each block is compared with ``oracle`` attacked the same way (same budget, seed, leaked
    ids; see :func:`against`): ``oracle.model`` is attacked here, ``Oracle.itself()`` reuses
    ``model``'s own curves, and ``None`` records ``"no oracle: no verdict"``."""
    return tamper_tests(model, [data], budget, oracle=oracle, progress=progress)[0]


def tamper_tests(model: nn.Module, datas: list[RequestData], budget: CheckBudget, *,
                 oracle: Oracle | None = None, progress: Progress | None = None
                 ) -> list[dict]:
    """:func:`tamper_test` for each request of a batch (same retain set), with the
    retain-only attack on ``model`` and on the oracle run once for all of them."""
    own = _attacks(model, datas, budget, progress)
    if oracle is None:
        return [{key: against(b, None, None) for key, b in blocks.items()} for blocks in own]
    refs = ([{}] * len(datas) if oracle.model is None
            else _attacks(oracle.model, datas, budget, progress))
    return [{key: against(b, ref.get(key), oracle.label) for key, b in blocks.items()}
            for blocks, ref in zip(own, refs, strict=True)]


def _flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().float().flatten() for p in model.parameters()])


def change_block(old: nn.Module, new: nn.Module, data: RequestData,
                 oracle: Oracle | None) -> dict:
    """How far the new model moved, against how far the retrain oracle moved: the mean
    cross-entropy on every id of the request (held-out and leakable) of the old model, the new
    one and the oracle, and the L2 distance of the new model's and the oracle's parameters from
    the old model's. ``oracle`` names the oracle: ``"self"`` (the new model is the retrain),
    ``"retrained"``, or ``None`` (no oracle: its columns are ``None``)."""
    ids = torch.cat([data.heldout, data.leakable])
    loss = lambda m: _num(evaluate(m, data.x, data.y, ids).loss)  # noqa: E731
    base = _flat(old)
    distance = lambda m: _num((_flat(m).to(base.device) - base).norm().item())  # noqa: E731
    out = {"ids": len(ids), "loss_before": loss(old), "loss_after": loss(new),
           "distance": distance(new), "weight_norm": _num(base.norm().item())}
    if oracle is None:
        return {**out, "oracle": None, "loss_oracle": None, "oracle_distance": None}
    if oracle.model is None:
        return {**out, "oracle": "self", "loss_oracle": out["loss_after"],
                "oracle_distance": out["distance"]}
    return {**out, "oracle": "retrained", "loss_oracle": loss(oracle.model),
            "oracle_distance": distance(oracle.model)}


def lira_check(old: nn.Module, new: nn.Module, data: RequestData, budget: CheckBudget,
               progress: Progress | None) -> tuple[dict, dict]:
    """LiRA's AUC and TPR at 1% FPR for the old and the new model, on the held-out ids
    against the same ids under shadows that never trained on the request
    (``dormant.experiments.membership``), with the shadow count and variance rule. The
    shadows live in a temporary cache, removed before this returns."""
    import tempfile

    from dormant.experiments.membership import audit_design, lira_columns
    from dormant.store import ModelCache

    if data.spec is None:
        raise DormantError("budget.lira_shadows needs the model's architecture; this model "
                           "was loaded without one")
    with tempfile.TemporaryDirectory(prefix="dormant-shadows-") as tmp:
        d = audit_design(data.x, data.y, data.x_test, data.y_test, data.retain, data.heldout,
                         data.leakable, data.spec, data.recipe, shadows=budget.lira_shadows,
                         seed=budget.seed, cache=ModelCache(Path(tmp)),
                         fingerprint="request", progress=progress)

    def one(model: nn.Module) -> dict:
        c = lira_columns(d, model, data.recipe, ["lira"])
        return {"lira_auc": c["lira_auc"], "lira_tpr_at_1pct": c["lira_tpr_at_1pct"],
                **d.labels()}

    return one(old), one(new)


def run_checks(old: nn.Module, new: nn.Module, data: RequestData, budget: CheckBudget, *,
               oracle: Oracle | None = None, old_known: dict | None = None,
               new_known: dict | None = None, progress: Progress | None = None) -> dict:
    """The full measurement record of a request: both models' state, the attack on the new
    one against ``oracle`` (see :func:`tamper_test`), and the budget spent. ``old_known``
    and ``new_known``: values already measured on the models (see :data:`KNOWN`)."""
    return run_batch_checks(old, new, [data], budget, oracle=oracle, old_known=old_known,
                            new_known=new_known, progress=progress)[0]


def run_batch_checks(old: nn.Module, new: nn.Module, datas: list[RequestData],
                     budget: CheckBudget, *, oracle: Oracle | None = None,
                     old_known: dict | None = None, new_known: dict | None = None,
                     progress: Progress | None = None) -> list[dict]:
    """:func:`run_checks` for each request of a batch (one old and one new model, one retain
    set). What does not depend on a request's ids is measured once: both models' backdoor
    profiles, retain and test accuracy (:data:`KNOWN`), and the retain-only attack on the new
    model and on the oracle; each request adds its forget accuracy, MIA, change and k-leaked
    attack."""
    changes = [change_block(old, new, d, oracle) for d in datas]  # before any attack
    before, after = [], []
    for d in datas:
        before.append(model_state(old, d, budget, known=old_known, progress=progress))
        after.append(model_state(new, d, budget, known=new_known, progress=progress))
        old_known = {k: before[-1][k] for k in KNOWN}
        new_known = {k: after[-1][k] for k in KNOWN}
    if budget.lira_shadows:
        for d, b, a in zip(datas, before, after, strict=True):
            b_lira, a_lira = lira_check(old, new, d, budget, progress)
            b.update(b_lira)
            a.update(a_lira)
    tampers = tamper_tests(new, datas, budget, oracle=oracle, progress=progress)
    return [{
        "before": b, "after": a, "tamper": t, "change": c,
        "evidence": {"heldout": len(d.heldout), "leakable": len(d.leakable),
                     "min_heldout": budget.min_heldout},
        "budget": budget.model_dump(),
    } for d, b, a, t, c in zip(datas, before, after, tampers, changes, strict=True)]
