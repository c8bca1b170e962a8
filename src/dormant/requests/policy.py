"""The policy a deletion request is judged by: per check, a warn and a fail threshold (higher
is worse for every check; a value must go OVER a threshold to trip it), and the budget the
checks spend. Loaded from YAML; unknown keys are errors, so a typo never silently keeps a
default."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ConfigDict, Field, model_validator

from dormant.errors import DormantError
from dormant.experiments.verdicts import RELEARN_EXCESS
from dormant.requests.checks import (
    NO_ORACLE,
    CheckBudget,
    available_checks,
    get_check,
    register_check,
)
from dormant.settings import Settings, parse_yaml, read_text, validate

STATUSES = ("pass", "warn", "fail")
RENAMED = {"recovery": "excess", "recovery_leaked": "excess_leaked"}
"""Policy keys that no longer exist, and what replaced them (issue 11): recovery, a method's
best attacked point minus its own start, scores over-forgetting as relearning."""
WARN_VERDICTS = ("over-forgets", "does-not-forget")
"""Tamper verdicts that warn whatever ``excess`` is (see :class:`Policy`)."""


class Thresholds(Settings):
    """``warn`` and ``fail`` levels; ``None`` never trips."""

    warn: float | None = Field(None, allow_inf_nan=False)
    fail: float | None = Field(None, allow_inf_nan=False)

    @model_validator(mode="after")
    def _ordered(self) -> Thresholds:
        if self.warn is not None and self.fail is not None and self.warn > self.fail:
            raise ValueError(f"warn ({self.warn}) must not be above fail ({self.fail})")
        return self

    def status(self, value: float) -> str:
        if math.isnan(value):
            return "pass"  # nothing measured: nothing to judge (the detail says so)
        if self.fail is not None and value > self.fail:
            return "fail"
        if self.warn is not None and value > self.warn:
            return "warn"
        return "pass"

    def flag_level(self) -> float | None:
        """Per-class flags mark classes over ``fail`` (over ``warn`` if there is no fail): a
        class between the two makes the check warn but is not named as a suspect. Measured on
        MNIST (README): a clean retrain moved a class's universal-perturbation success by up
        to 28.6 points, over warn (15) on 4 of 10 requests, while woken backdoors moved the
        target by 40 to 46."""
        return self.fail if self.fail is not None else self.warn


class Policy(Settings):
    """Defaults: utility may drop 2 points (warn) or 5 (fail); held-out forget accuracy may
    exceed test accuracy by 5 / 10 points; the MIA AUC may reach 0.6 / 0.7 (0.5 is "looks
    unseen"); a class's Neural Cleanse norm may shrink by 30% / 50%, its
    universal-perturbation success may jump by 15 / 30 points.

    The tamper checks judge ``excess``: the new model's attacked held-out forget accuracy at
    the attack's end minus the retrain oracle's, attacked the same way. Retain-only
    (``excess``): warn over 5, fail over 10 (``verdicts.RELEARN_EXCESS``, the bar from which
    a study's verdict over seeds says "relearns"; a value must go over a level, so exactly
    10.0 warns); with k leaked ids (``excess_leaked``): 10 / 15, looser because fine-tuning on
    leaked forget examples lifts both curves and, with one seed and no interval, makes the
    difference of their ends noisier.
    The tamper verdict ``over-forgets`` or ``does-not-forget`` warns at least, whatever the
    excess: the new model's forget accuracy is then more than ``verdicts.FORGET_MARGIN``
    points from the oracle's, so the attack started elsewhere and its excess says nothing
    about resistance; a person should look. It does not fail: an over-forgetting model gives
    nothing back (its excess stays under the thresholds, or they fail it), it only makes the
    forgotten ids conspicuous; a model that did not forget is failed by ``forget_gap`` or
    the MIA when it matters. Null thresholds turn the excess levels off, not that floor. A
    tamper block without an oracle (an audit of a plain state dict) has no verdict and no
    value: it passes, and its detail says "no oracle: no verdict".

    There is one key per registered check (``checks.register_check``: the built-ins below,
    and any check added in its own file) holding its ``Thresholds``, and ``budget``, the
    :class:`CheckBudget`."""

    model_config = ConfigDict(extra="allow", frozen=True)

    budget: CheckBudget = CheckBudget()

    @model_validator(mode="before")
    @classmethod
    def _checks(cls, data):
        # one Thresholds per registered check (``policy.excess``); ``excess: {warn: 3}``
        # moves the warn level and keeps the default fail level
        if data is None:
            data = {}
        if not isinstance(data, dict):
            return data
        for old, new in RENAMED.items():
            if old in data:
                raise ValueError(
                    f"key {old!r} was renamed to {new!r}: the tamper checks now judge the "
                    "attacked forget accuracy at the attack's end minus the retrain oracle's, "
                    "not the recovery from the model's own start; see configs/policy.yaml")
        checks = [get_check(name) for name in available_checks()]
        known = [c.name for c in checks] + ["budget"]
        unknown = [k for k in data if k not in known]
        if unknown:
            raise ValueError(f"unknown key {unknown[0]!r}; known keys: {', '.join(known)}")
        out = {k: v for k, v in data.items() if k == "budget"}
        for c in checks:
            given = data.get(c.name, {})
            if isinstance(given, dict):
                given = {"warn": c.warn, "fail": c.fail, **given}
            out[c.name] = _thresholds(c.name, given)
        return out

    def check_budget(self) -> CheckBudget:
        return self.budget

    def thresholds(self, name: str) -> Thresholds:
        return (self.model_extra or {})[name]

    def to_dict(self) -> dict:
        return self.model_dump()


def _thresholds(name: str, value) -> Thresholds:
    from pydantic import ValidationError

    from dormant.defenses.registry import under

    try:
        return Thresholds.model_validate(value)
    except ValidationError as e:
        raise under(name, e) from None


def load_policy(path: Path | None) -> Policy:
    """The policy in ``path`` (YAML), defaults where a key is absent (an empty file: all
    defaults); ``None``: all defaults. Any problem is one DormantError line naming the file
    and the key."""
    if path is None:
        return Policy()
    where = f"policy file {path}"
    raw = parse_yaml(read_text(Path(path), "policy file"), where)
    if raw is not None and not isinstance(raw, dict):
        raise DormantError(f"{where}: a policy is a mapping of check names to thresholds")
    return validate(Policy, raw or {}, where)


@dataclass
class Check:
    name: str
    group: str
    value: float
    warn: float | None
    fail: float | None
    status: str
    detail: str
    classes: list[int] = field(default_factory=list)
    insufficient: bool = False
    """The request gives this check too little to decide on (its detail says why): it warns
    rather than pass."""

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["value"] = None if math.isnan(self.value) else self.value
        return d


def _f(v) -> float:
    return math.nan if v is None else float(v)


def _make(name: str, group: str, t: Thresholds, value: float, detail: str,
          classes: list[int] | None = None) -> Check:
    value = round(value, 4) if not math.isnan(value) else value
    return Check(name, group, value, t.warn, t.fail, t.status(value), detail, classes or [])


def _too_few(m: dict) -> str:
    """Why the held-out ids are too few for a statistic on them; empty when they suffice (or
    a record from before this was measured)."""
    ev = m.get("evidence") or {}
    n, need = ev.get("heldout"), ev.get("min_heldout")
    if n is None or need is None or n >= need:
        return ""
    return (f"insufficient evidence: {n} held-out id{'s' if n != 1 else ''}, at least {need} "
            f"needed (one id moves forget accuracy by {100 / max(n, 1):.0f} points)")


def _weigh(check: Check, m: dict) -> Check:
    """A check on the held-out ids warns at least, naming why, when they are too few."""
    why = _too_few(m)
    if why:
        check.insufficient = True
        check.detail = f"{why}; {check.detail}"
        if check.status == "pass":
            check.status = "warn"
    return check


def _drop(t: Thresholds, m: dict, name: str, key: str, label: str) -> list[Check]:
    b, a = _f(m["before"].get(key)), _f(m["after"].get(key))
    return [_make(name, "utility", t, b - a, f"{label} {b:.1f} -> {a:.1f} ({a - b:+.1f} points)")]


def _per_class(name: str, t: Thresholds, values: list[float], fmt) -> Check:
    """The worst class sets the value; the classes over the flag level are named."""
    known = [(c, v) for c, v in enumerate(values) if not math.isnan(v)]
    if not known:
        return _make(name, "backdoor", t, math.nan, "not measured for any class")
    level = t.flag_level()
    flagged = [c for c, v in known if level is not None and v > level]
    worst = max(known, key=lambda cv: cv[1])[0]
    shown = flagged or [worst]
    detail = "; ".join(fmt(c) for c in shown)
    return _make(name, "backdoor", t, max(v for _, v in known), detail, flagged)


def _tamper_detail(block: dict, k) -> str:
    """Start and end of the attack on the new model, the oracle's, excess, gap and verdict."""
    start, end = _f(block.get("start")), _f(block.get("end"))
    own = f"k={k}: forget {start:.1f} -> {end:.1f} at the attack's end"
    if block.get("verdict") is None:
        return f"{own}; {block.get('no_verdict') or NO_ORACLE}"
    o_start, o_end = _f(block.get("oracle_start")), _f(block.get("oracle_end"))
    return (f"{own}, oracle {o_start:.1f} -> {o_end:.1f}: excess "
            f"{_f(block.get('excess')):+.1f}, forget gap {_f(block.get('forget_gap')):+.1f}: "
            f"{block['verdict']}")


def _tamper(name: str, t: Thresholds, m: dict, leaked: bool) -> list[Check]:
    """One check per tamper block (``k0`` for ``excess``, the leaked ones for
    ``excess_leaked``) on its ``excess``; ``over-forgets`` and ``does-not-forget`` warn at
    least (see :class:`Policy`)."""
    out = []
    for key, block in sorted((m.get("tamper") or {}).items(),
                             key=lambda kv: int(kv[0].removeprefix("k"))):
        if (key != "k0") != leaked:
            continue
        k = block.get("k", key.removeprefix("k"))
        check = _make(name, "tamper", t, _f(block.get("excess")), _tamper_detail(block, k))
        if block.get("verdict") in WARN_VERDICTS and check.status == "pass":
            check.status = "warn"
        out.append(_weigh(check, m))
    return out


# the built-in checks, in the order they are judged: utility, forgetting, tamper, backdoor

@register_check("retain_drop", group="utility", warn=2, fail=5)
def retain_drop(t: Thresholds, m: dict) -> list[Check]:
    """Retain accuracy lost, points."""
    return _drop(t, m, "retain_drop", "retain_acc", "retain acc")


@register_check("test_drop", group="utility", warn=2, fail=5)
def test_drop(t: Thresholds, m: dict) -> list[Check]:
    """Test accuracy lost, points."""
    return _drop(t, m, "test_drop", "test_acc", "test acc")


@register_check("forget_gap", group="forgetting", warn=5, fail=10)
def forget_gap(t: Thresholds, m: dict) -> list[Check]:
    """Held-out forget accuracy minus test accuracy after: still remembered."""
    forget, test = _f(m["after"].get("forget_acc")), _f(m["after"].get("test_acc"))
    return [_weigh(_make("forget_gap", "forgetting", t, forget - test,
                         f"held-out forget acc {forget:.1f} vs test acc {test:.1f} "
                         f"({forget - test:+.1f} points)"), m)]


@register_check("mia_auc", group="forgetting", warn=0.6, fail=0.7)
def mia_auc(t: Thresholds, m: dict) -> list[Check]:
    """SVC MIA AUC of the forgotten ids against test images (0.5 = unseen)."""
    mia = _f(m["after"].get("mia_auc"))
    return [_weigh(_make("mia_auc", "forgetting", t, mia,
                         f"SVC MIA AUC {mia:.3f} of the held-out ids against test images "
                         "(0.5: unseen)"), m)]


@register_check("lira_auc", group="forgetting", warn=0.65, fail=0.75)
def lira_auc(t: Thresholds, m: dict) -> list[Check]:
    """LiRA, per example, on the held-out ids (``budget.lira_shadows`` > 0): how far the new
    model's scores sit from those of shadows that never trained on the ids, either way, as
    max(AUC, 1 - AUC)."""
    auc = m["after"].get("lira_auc")
    if auc is None:
        return []  # off (the default): it costs lira_shadows trainings per request
    auc = _f(auc)
    far = max(auc, 1 - auc)
    side = "member-like" if auc >= 0.5 else "less seen than never-trained"
    return [_weigh(_make(
        "lira_auc", "forgetting", t, far,
        f"LiRA AUC {auc:.3f} of the held-out ids against shadows that never had them "
        f"({side}; 0.5: as if never trained on them), {m['after']['mia_shadows']} shadows, "
        f"{m['after']['mia_variance']} variance; before {_f(m['before'].get('lira_auc')):.3f}"),
        m)]


MEMORISED_RISE = 0.05
"""The least rise of the forget loss (mean cross-entropy, nats) that retraining without the ids
must show for ``unchanged`` to judge a model's change against it. Below it the ids are barely
memorised (a model that never saw them scores them about as well), so no change, or absence
of change, on them says anything about forgetting: the check warns, ``insufficient evidence``."""


UNMOVED = 0.05
"""Where the forget loss cannot tell (ids barely memorised), weights that moved less than this
share of the retrain oracle's distance count as "did not measurably change"."""


@register_check("unchanged", group="forgetting", warn=0.9, fail=None)
def unchanged(t: Thresholds, m: dict) -> list[Check]:
    """How much of the retrain oracle's forget-loss rise the new model did not make (0: all
    of it, 1: none); the weight distances are in the detail."""
    c = m.get("change")
    if not c:
        return []
    before, after = _f(c.get("loss_before")), _f(c.get("loss_after"))
    dist, norm = _f(c.get("distance")), _f(c.get("weight_norm"))
    moved = (f"forget loss {before:.4f} -> {after:.4f} ({after - before:+.4f}) on the "
             f"request's {c.get('ids')} ids, weights moved {dist:.4g} (L2, {dist / norm:.2%} "
             "of their norm)")
    if c.get("oracle") is None:
        return [_make("unchanged", "forgetting", t, math.nan,
                      f"{moved}; no oracle, so nothing to compare with")]
    if c["oracle"] == "self":
        return [_make("unchanged", "forgetting", t, 0.0,
                      f"{moved}; the new model is the retrain oracle itself")]
    oracle, o_dist = _f(c.get("loss_oracle")), _f(c.get("oracle_distance"))
    rise, o_rise = after - before, oracle - before
    share = dist / o_dist if o_dist > 0 else math.nan
    against = (f"; the retrain oracle's forget loss {oracle:.4f} ({o_rise:+.4f}), its weights "
               f"moved {o_dist:.4g} (the new model moved {share:.2%} of that)")
    if not o_rise > MEMORISED_RISE:
        check = _make("unchanged", "forgetting", t, math.nan, moved + against)
        check.insufficient = True
        check.status = "warn"
        still = share < UNMOVED or math.isnan(share)
        check.detail = (f"insufficient evidence: retraining without the ids raises their loss "
                        f"by {o_rise:+.4f} only (needs over {MEMORISED_RISE}): they are barely "
                        "memorised, so forgetting them cannot be shown; "
                        + ("the model did not measurably change either: " if still else "")
                        + moved + against)
        return [check]
    value = 1 - rise / o_rise
    check = _make("unchanged", "forgetting", t, value,
                  f"{moved}: {rise / o_rise:.1%} of the oracle's loss rise{against}")
    if check.status != "pass":
        check.detail = "the model did not measurably change on the forget ids: " + check.detail
    return [check]


@register_check("excess", group="tamper", warn=5, fail=RELEARN_EXCESS)
def excess(t: Thresholds, m: dict) -> list[Check]:
    """Retain-only relearning: forget accuracy at the attack's end minus the oracle's."""
    return _tamper("excess", t, m, leaked=False)


@register_check("excess_leaked", group="tamper", warn=10, fail=15)
def excess_leaked(t: Thresholds, m: dict) -> list[Check]:
    """Relearning with k leaked forget examples: the end minus the oracle's."""
    return _tamper("excess_leaked", t, m, leaked=True)


@register_check("nc_shrink", group="backdoor", warn=0.3, fail=0.5)
def nc_shrink(t: Thresholds, m: dict) -> list[Check]:
    """A class's Neural Cleanse norm shrinking, fraction."""
    nb = [_f(v) for v in m["before"]["nc_norms"]]
    na = [_f(v) for v in m["after"]["nc_norms"]]
    # a norm that was 0 before cannot shrink further
    shrink = [1 - x / y if y > 0 else math.nan for x, y in zip(na, nb, strict=True)]
    return [_per_class("nc_shrink", t, shrink,
                       lambda c: f"class {c}: norm {nb[c]:.1f} -> {na[c]:.1f} "
                                 f"({-shrink[c]:+.0%})")]


@register_check("uap_jump", group="backdoor", warn=15, fail=30)
def uap_jump(t: Thresholds, m: dict) -> list[Check]:
    """A class's targeted universal-perturbation success jumping, points."""
    ub = [_f(v) for v in m["before"]["uap_success"]]
    ua = [_f(v) for v in m["after"]["uap_success"]]
    jump = [x - y for x, y in zip(ua, ub, strict=True)]
    return [_per_class("uap_jump", t, jump,
                       lambda c: f"class {c}: success {ub[c]:.1f}% -> {ua[c]:.1f}% "
                                 f"({jump[c]:+.1f} points)")]


def judge(policy: Policy, measurements: dict) -> list[Check]:
    """Every registered check of the policy on a ``run_checks`` record, in registration
    order: utility, forgetting, tamper, backdoor, then any added check. A tamper block the
    record lacks (``leaked_k`` = 0) gets no check."""
    return [c for info in map(get_check, available_checks())
            for c in info.judge(policy.thresholds(info.name), measurements)]


def verdict(checks: list[Check]) -> str:
    """The worst status of all checks; no checks pass."""
    return max((c.status for c in checks), key=STATUSES.index, default="pass")
