"""The policy a deletion request is judged by: per check, a warn and a fail threshold (higher
is worse for every check; a value must go OVER a threshold to trip it), and the budget the
checks spend. Loaded from YAML; unknown keys are errors, so a typo never silently keeps a
default."""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, create_model, model_validator

from dormant.errors import DormantError
from dormant.experiments.verdicts import RELEARN_EXCESS
from dormant.requests.checks import NO_ORACLE, CheckBudget

STATUSES = ("pass", "warn", "fail")
RENAMED = {"recovery": "excess", "recovery_leaked": "excess_leaked"}
"""Policy keys that no longer exist, and what replaced them (issue 11): recovery, a method's
best attacked point minus its own start, scores over-forgetting as relearning."""
WARN_VERDICTS = ("over-forgets", "does-not-forget")
"""Tamper verdicts that warn whatever ``excess`` is (see :class:`Policy`)."""


class Thresholds(BaseModel):
    """``warn`` and ``fail`` levels; ``None`` never trips."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    warn: float | None = None
    fail: float | None = None

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


def _check_budget(self) -> BudgetPolicy:
    CheckBudget(**self.model_dump())  # its own range checks, reported as the field's error
    return self


# the budget section mirrors CheckBudget field for field, so the two cannot drift apart
BudgetPolicy = create_model(
    "BudgetPolicy",
    __config__=ConfigDict(extra="forbid", frozen=True),
    __validators__={"_budget": model_validator(mode="after")(_check_budget)},
    **{f.name: (typing.get_type_hints(CheckBudget)[f.name], f.default)
       for f in dataclasses.fields(CheckBudget)},
)


def _t(warn: float | None, fail: float | None):
    return Thresholds(warn=warn, fail=fail)


class Policy(BaseModel):
    """Defaults: utility may drop 2 points (warn) or 5 (fail); held-out forget accuracy may
    exceed test accuracy by 5 / 10 points; the MIA AUC may reach 0.6 / 0.7 (0.5 is "looks
    unseen"); a class's Neural Cleanse norm may shrink by 30% / 50%, its
    universal-perturbation success may jump by 15 / 30 points.

    The tamper checks judge ``excess``: the new model's attacked held-out forget accuracy at
    the attack's end minus the retrain oracle's, attacked the same way. Retain-only
    (``excess``): warn over 5, fail over 10 (``verdicts.RELEARN_EXCESS``, from which the
    verdict says "relearns"; a value must go over a level, so exactly 10.0 is "relearns" and
    warns); with k leaked ids (``excess_leaked``): 10 / 15, looser because fine-tuning on
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
    value: it passes, and its detail says "no oracle: no verdict"."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    retain_drop: Thresholds = _t(2, 5)
    test_drop: Thresholds = _t(2, 5)
    forget_gap: Thresholds = _t(5, 10)
    mia_auc: Thresholds = _t(0.6, 0.7)
    excess: Thresholds = _t(5, RELEARN_EXCESS)
    excess_leaked: Thresholds = _t(10, 15)
    nc_shrink: Thresholds = _t(0.3, 0.5)
    uap_jump: Thresholds = _t(15, 30)
    budget: BudgetPolicy = BudgetPolicy()

    @model_validator(mode="before")
    @classmethod
    def _partial(cls, data):
        # ``excess: {warn: 3}`` moves the warn level and keeps the default fail level
        if not isinstance(data, dict):
            return data
        for old, new in RENAMED.items():
            if old in data:
                raise ValueError(
                    f"key {old!r} was renamed to {new!r}: the tamper checks now judge the "
                    "attacked forget accuracy at the attack's end minus the retrain oracle's, "
                    "not the recovery from the model's own start; see configs/policy.yaml")
        out = dict(data)
        for name, given in data.items():
            info = cls.model_fields.get(name) if isinstance(name, str) else None
            if info is not None and isinstance(given, dict) and isinstance(info.default,
                                                                           Thresholds):
                out[name] = {**info.default.model_dump(), **given}
        return out

    def check_budget(self) -> CheckBudget:
        return CheckBudget(**self.budget.model_dump())

    def to_dict(self) -> dict:
        return self.model_dump()


def _known(loc: tuple) -> list[str]:
    """The keys allowed at the level of ``loc`` (a pydantic error location)."""
    model: type[BaseModel] = Policy
    for part in loc[:-1]:
        model = model.model_fields[part].annotation
    return list(model.model_fields)


def load_policy(path: Path | None) -> Policy:
    """The policy in ``path`` (YAML), defaults where a key is absent; ``None``: all defaults.
    Any problem is one DormantError line naming the file and the key."""
    if path is None:
        return Policy()
    path = Path(path)
    if not path.is_file():
        raise DormantError(f"policy file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise DormantError(f"{path}: not valid YAML{where}: {getattr(e, 'problem', None) or e}"
                           ) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise DormantError(f"{path}: a policy is a mapping of check names to thresholds")
    try:
        return Policy.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        loc = tuple(err["loc"])
        key = ".".join(map(str, loc))
        if err["type"] == "extra_forbidden":
            raise DormantError(f"{path}: unknown key {key!r}; known keys: "
                               f"{', '.join(_known(loc))}") from None
        msg = err["msg"].removeprefix("Value error, ")
        if key:
            raise DormantError(f"{path}: key {key!r}: {msg}") from None
        raise DormantError(f"{path}: {msg}") from None


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


def _drop(policy: Policy, m: dict, name: str, key: str, label: str) -> Check:
    b, a = _f(m["before"].get(key)), _f(m["after"].get(key))
    return _make(name, "utility", getattr(policy, name), b - a,
                 f"{label} {b:.1f} -> {a:.1f} ({a - b:+.1f} points)")


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


def _backdoor(policy: Policy, m: dict) -> list[Check]:
    b, a = m["before"], m["after"]
    nb, na = [_f(v) for v in b["nc_norms"]], [_f(v) for v in a["nc_norms"]]
    # a norm that was 0 before cannot shrink further
    shrink = [1 - x / y if y > 0 else math.nan for x, y in zip(na, nb, strict=True)]
    ub, ua = [_f(v) for v in b["uap_success"]], [_f(v) for v in a["uap_success"]]
    jump = [x - y for x, y in zip(ua, ub, strict=True)]
    return [
        _per_class("nc_shrink", policy.nc_shrink, shrink,
                   lambda c: f"class {c}: norm {nb[c]:.1f} -> {na[c]:.1f} "
                             f"({-shrink[c]:+.0%})"),
        _per_class("uap_jump", policy.uap_jump, jump,
                   lambda c: f"class {c}: success {ub[c]:.1f}% -> {ua[c]:.1f}% "
                             f"({jump[c]:+.1f} points)"),
    ]


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


def _tamper(policy: Policy, m: dict) -> list[Check]:
    """One check per tamper block on its ``excess``; ``over-forgets`` and ``does-not-forget``
    warn at least (see :class:`Policy`)."""
    out = []
    for key, block in sorted((m.get("tamper") or {}).items(),
                             key=lambda kv: int(kv[0].removeprefix("k"))):
        name, t = ("excess", policy.excess) if key == "k0" else \
            ("excess_leaked", policy.excess_leaked)
        k = block.get("k", key.removeprefix("k"))
        check = _make(name, "tamper", t, _f(block.get("excess")), _tamper_detail(block, k))
        if block.get("verdict") in WARN_VERDICTS and check.status == "pass":
            check.status = "warn"
        out.append(check)
    return out


def judge(policy: Policy, measurements: dict) -> list[Check]:
    """Every check of the policy on a ``run_checks`` record, in a fixed order: utility,
    forgetting, tamper, backdoor. A tamper block the record lacks (``leaked_k`` = 0) gets no
    check."""
    m = measurements
    a = m["after"]
    forget, test = _f(a.get("forget_acc")), _f(a.get("test_acc"))
    mia = _f(a.get("mia_auc"))
    return [
        _drop(policy, m, "retain_drop", "retain_acc", "retain acc"),
        _drop(policy, m, "test_drop", "test_acc", "test acc"),
        _make("forget_gap", "forgetting", policy.forget_gap, forget - test,
              f"held-out forget acc {forget:.1f} vs test acc {test:.1f} "
              f"({forget - test:+.1f} points)"),
        _make("mia_auc", "forgetting", policy.mia_auc, mia,
              f"SVC MIA AUC {mia:.3f} of the held-out ids against test images (0.5: unseen)"),
        *_tamper(policy, m),
        *_backdoor(policy, m),
    ]


def verdict(checks: list[Check]) -> str:
    """The worst status of all checks; no checks pass."""
    return max((c.status for c in checks), key=STATUSES.index, default="pass")
