"""A study's method entries resolved into pipelines: one or more methods run one after the
other (``then:``), each with the hyper-parameters the user gave it."""

from __future__ import annotations

from dataclasses import dataclass

from dormant.errors import DormantError
from dormant.experiments.spec import MethodEntry, RelearnSpec
from dormant.unlearn import get_method, make_hparams

REFERENCE_MODELS = ("original", "retrain")


@dataclass(frozen=True)
class Stage:
    method: str
    hparams: dict


@dataclass(frozen=True)
class Pipeline:
    """``name`` labels the results; ``stages`` run in order from the original model."""

    name: str
    stages: tuple[Stage, ...]
    calibrate: str | None = None
    """The pipeline's own ``calibrate`` (its entry's), or None: the study's."""

    def calibration(self, spec: RelearnSpec) -> str:
        return self.calibrate or spec.calibrate

    @property
    def is_reference(self) -> bool:
        return self.name in REFERENCE_MODELS


def _entries(spec: RelearnSpec) -> dict[str, MethodEntry]:
    entries: dict[str, MethodEntry] = {}
    for item in spec.methods:
        # model_construct: a bare name is checked against the registry below, with its list
        e = item if isinstance(item, MethodEntry) else MethodEntry.model_construct(
            name=item, method=None, hparams=spec.hparams.get(item, {}), then=None)
        if e.name in entries:
            raise DormantError(f"methods: {e.name!r} appears twice; give each entry its own name")
        entries[e.name] = e
    return entries


def resolve(spec: RelearnSpec) -> list[Pipeline]:
    """Every method entry as a pipeline, references first; refuses unknown methods, bad
    hyper-parameters and ``then:`` chains that loop, before any work starts."""
    entries = _entries(spec)
    targets = {e.then for e in entries.values() if e.then}
    for name in spec.hparams:
        if name not in entries and name not in targets:
            raise DormantError(f"hparams given for {name!r}, which is not in methods; "
                               "add it to methods or remove its hparams")
    out = [Pipeline(r, (Stage(r, {}),)) for r in REFERENCE_MODELS]
    for name, entry in entries.items():
        if name in REFERENCE_MODELS:
            if entry.then or entry.hparams or entry.calibrate or \
                    entry.method not in (None, name):
                raise DormantError(f"methods: {name!r} is a reference model; it takes no "
                                   "method, hparams, then or calibrate")
            continue
        stages, seen, e = [], [], entry
        while e is not None:
            if e.name in seen:
                raise DormantError(f"methods: the then: chain loops: "
                                   f"{' -> '.join([*seen, e.name])}")
            seen.append(e.name)
            try:
                make_hparams(e.base, e.hparams)
            except DormantError as err:
                raise DormantError(f"methods: entry {e.name!r}: {err}") from None
            stages.append(Stage(e.base, dict(e.hparams)))
            nxt = e.then
            if nxt is None:
                e = None
            elif nxt in entries:
                e = entries[nxt]
            elif nxt in REFERENCE_MODELS:
                raise DormantError(f"methods: {e.name!r} then: {nxt!r}: a reference model "
                                   "cannot continue a chain")
            else:
                try:
                    get_method(nxt)
                except DormantError as err:
                    raise DormantError(f"methods: entry {e.name!r} then: {err}") from None
                e = MethodEntry.model_construct(name=nxt, method=None, then=None,
                                                hparams=spec.hparams.get(nxt, {}))
        out.append(Pipeline(name, tuple(stages), entry.calibrate))
    return out
