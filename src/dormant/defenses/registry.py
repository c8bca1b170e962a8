"""The defenses' registry: one entry per defense, made where the defense lives.

A defense is one file: its config (a frozen pydantic model whose defaults are the paper's),
its presets (``paper`` and the CPU-sized ``cpu`` the backdoor study and the request checks use
unless told otherwise) and one ``@register_defense`` on the function the backdoor study calls.

- ``stage="scan"`` runs on every model before and after unlearning; its values become the
  row's ``<column>_before`` / ``<column>_after`` and its tensors the scan's artefact.
- ``stage="mitigate"`` runs once per cell on the model a cell ends with; its values are the
  row's columns as named.

The function is ``fn(cfg, ctx, model, trigger) -> (values, tensors)``. ``ctx`` is the study's
scanner: ``x_def``/``y_def`` the defender's clean test images (never measured on),
``x_eval``/``y_eval`` the evaluation images, ``num_classes``, ``seed``, ``target``,
``progress`` and ``metrics(model, trigger) -> {"clean_acc", "asr"}``. A defense switched off
(``defenses: {name: false}``) reports ``None`` in each of its ``columns``.

``control`` (optional) is the defense's positive control on the run's BadNets baseline, which
the report judges before the defense's results on the attack count as evidence, and, with
the same rule made strength-free where it needs to be, on the dose-matched backdoors.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from dormant import plugins
from dormant.errors import DormantError

Stage = Literal["scan", "mitigate"]


@dataclass(frozen=True)
class Control:
    """A defense's positive control on the BadNets baseline, judged per seed.

    ``seed(num)`` turns one seed's BadNets row (``num(column)`` is a float or None) into the
    values the report keeps, with ``"pass"`` (bool, or None when the defense did not run) and
    ``"shown"`` (its table cell). ``judge(passes)`` decides from the seeds' passes;
    ``reached(values)`` says in words what the defense reached."""

    rule: str
    seed: Callable[[Callable[[str], float | None]], dict]
    reached: Callable[[list[dict]], str]
    judge: Callable[[list[bool]], bool] = all
    thresholds: Mapping[str, float] = field(default_factory=dict)
    dose: Callable[[Callable[[str], float | None]], dict] | None = None
    """The same judgement on a dose-matched backdoor (condition ``dose``), where the row also
    holds ``asr_floor``, the unpoisoned twin's ASR; None: ``seed`` as it is (a rule that does
    not depend on the backdoor's strength)."""
    dose_rule: str = ""

    def at_dose(self, num: Callable[[str], float | None]) -> dict:
        return (self.dose or self.seed)(num)


@dataclass(frozen=True)
class DefenseInfo:
    name: str
    config: type[BaseModel]
    run: Callable
    label: str
    stage: Stage
    columns: tuple[str, ...]
    presets: Mapping[str, BaseModel] = field(default_factory=dict)
    study_preset: str | None = "cpu"
    """The preset the backdoor study starts from; ``None``: off unless a study names it."""
    control: Control | None = None
    report: Mapping[str, str] = field(default_factory=dict)
    """Row columns the report's conditions table shows, with their headings."""
    flags: tuple[str, ...] = ()
    """Those of ``report`` that are yes/no per seed (shown as hits/scanned)."""
    rank: int = 100
    summary: str = ""

    def study_default(self) -> BaseModel | None:
        if self.study_preset is None:
            return None
        return self.presets.get(self.study_preset) or self.config()

    def preset(self, name: str) -> BaseModel:
        if name == "paper" and "paper" not in self.presets:
            return self.config()
        if name not in self.presets:
            raise DormantError(f"defense {self.name!r} has no preset {name!r}; it has: "
                               f"{', '.join(sorted({'paper', *self.presets}))}")
        return self.presets[name]


_DEFENSES: dict[str, DefenseInfo] = {}


def register_defense(name: str, config: type[BaseModel], *, label: str, columns: tuple[str, ...],
                     stage: Stage = "scan", presets: Mapping[str, BaseModel] | None = None,
                     study_preset: str | None = "cpu", control: Control | None = None,
                     report: Mapping[str, str] | None = None, flags: tuple[str, ...] = (),
                     rank: int = 100) -> Callable[[Callable], Callable]:
    """Decorator: register ``fn(cfg, ctx, model, trigger) -> (values, tensors)`` as defense
    ``name`` with its config class (see the module docstring). ``rank`` orders the listing
    (the study's runs and the report's tables), ties in registration order."""
    if stage not in ("scan", "mitigate"):
        raise DormantError(f"defense {name!r}: stage must be scan or mitigate, got {stage!r}")

    def deco(fn: Callable) -> Callable:
        doc = (config.__doc__ or "").strip().split("\n\n")[0]
        info = DefenseInfo(name, config, fn, label, stage, tuple(columns), dict(presets or {}),
                           study_preset, control, dict(report or {}), tuple(flags), rank,
                           " ".join(doc.split()))
        plugins.claim("defenses", name, _DEFENSES, info, fn.__module__)
        return fn

    return deco


def available_defenses() -> list[str]:
    """Registered defenses by ``rank``, then registration order (the order the study runs
    them and the report lists them)."""
    plugins.load()
    order = list(_DEFENSES)
    return sorted(order, key=lambda n: (_DEFENSES[n].rank, order.index(n)))


def get_defense(name: str) -> DefenseInfo:
    plugins.load()
    plugins.refuse_clash("defenses", name)
    if name not in _DEFENSES:
        raise DormantError(f"unknown defense {name!r}; choose one of: "
                           f"{', '.join(available_defenses())}")
    return _DEFENSES[name]


def under(key: str, e: ValidationError, title: str = "settings") -> ValidationError:
    """``e`` with ``key`` in front of every error's location: raised from a validator, pydantic
    reports the nested error under the outer keys too (``defenses.nc.epochs``)."""
    from pydantic_core import InitErrorDetails, PydanticCustomError

    return ValidationError.from_exception_data(title, [
        InitErrorDetails(type=PydanticCustomError(x["type"], x["msg"]),
                         loc=(key, *x["loc"]), input=x.get("input"))
        for x in e.errors()])


def defense_config(name: str, given: Any, base: BaseModel | None = None) -> BaseModel | None:
    """Defense ``name``'s config from a study or policy value: ``False``/``None`` switch it
    off, ``True`` is ``base`` (the study preset by default, else the ``cpu`` preset, else the
    config's defaults), a mapping is layered over
    ``base`` key by key and validated, a config instance is taken as it is. A bad mapping
    raises a ValidationError located under ``name``."""
    info = get_defense(name)
    if base is None:  # a defense off by default still starts from its cpu preset when named
        base = info.study_default() or info.presets.get("cpu") or info.config()
    if given is None or given is False:
        return None
    if given is True:
        return base
    if isinstance(given, info.config):
        return given
    if isinstance(given, Mapping):
        try:
            return info.config.model_validate({**base.model_dump(), **given})
        except ValidationError as e:
            raise under(name, e) from None
    raise ValueError(f"defense {name!r} takes a mapping of its settings, true or false, got "
                     f"{given!r}")


def span(values: list[float], decimals: int = 1) -> str:
    """``lo to hi`` (one number when they agree, "-" for none): a control's reach in words."""
    if not values:
        return "-"
    lo, hi = min(values), max(values)
    return f"{lo:.{decimals}f}" if lo == hi else f"{lo:.{decimals}f} to {hi:.{decimals}f}"


class DefenseSpec(BaseModel):
    """The defenses the study runs, one key per registered defense (``dormant.defenses``:
    ``nc``, ``cd``, ``ibau``), each holding that defense's own config. A key left out runs the
    defense's ``cpu`` preset (sized for a CPU; the paper's defaults live in each defense's
    config and its ``paper`` preset); a mapping is layered over that preset key by key
    (``nc: {epochs: 5}``); ``false`` switches the defense off, ``true`` runs the preset.

    ``defense_size``: clean test images held by the defender (NC reverses on the first
    ``nc.images`` of them, I-BAU uses them all); never used for the metrics."""

    model_config = ConfigDict(extra="allow", frozen=True, allow_inf_nan=False)

    defense_size: int = Field(default=500, ge=10)

    MOVED: ClassVar[dict[str, str]] = {
        "nc_epochs": "nc.epochs", "nc_images": "nc.images", "nc_batch": "nc.batch_size",
        "cd_images": "cd.images", "cd_steps": "cd.steps", "ibau_rounds": "ibau.rounds"}
    """The flat keys of the study files before the defenses' settings were nested."""

    @model_validator(mode="before")
    @classmethod
    def _registered(cls, data):
        if not isinstance(data, dict):
            return data
        known = available_defenses()
        unknown = [k for k in data if k != "defense_size" and k not in known]
        if unknown and unknown[0] in cls.MOVED:
            d, key = cls.MOVED[unknown[0]].split(".")
            raise ValueError(f"key {unknown[0]!r} moved into its defense's own settings: write "
                             f"{d}: {{{key}: {data[unknown[0]]}}}")
        if unknown:
            raise ValueError(f"unknown defense {unknown[0]!r}; the registered defenses are "
                             f"{', '.join(known)} (and defense_size)")
        out = {k: v for k, v in data.items() if k == "defense_size"}
        for name in known:
            out[name] = (defense_config(name, data[name]) if name in data
                         else get_defense(name).study_default())
        return out

    def config(self, name: str):
        """Defense ``name``'s config, or ``None`` when it is off."""
        return (self.model_extra or {}).get(name)

    def active(self, stage: str) -> list[tuple[object, object]]:
        """``(DefenseInfo, config or None)`` of every registered defense of ``stage``."""
        return [(get_defense(n), self.config(n)) for n in available_defenses()
                if get_defense(n).stage == stage]
