"""What the backdoor study measures on every model: clean accuracy and ASR on the evaluation
half of the test set, and the registered defenses (``dormant.defenses.registry``) run with the
defender's clean half.

The defender never sees the evaluation images, and no metric is computed on the defender's:
Neural Cleanse and I-BAU use ``defense_size`` clean test images, Cognitive Distillation's
AUROC is measured on evaluation images (clean vs. triggered). The scanner is the context
each defense's study function gets (see the registry's docstring).
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save
from torch import nn

import dormant.defenses  # noqa: F401 - the built-in defenses register themselves
from dormant.attacks import Trigger, attack_success_rate
from dormant.data import Dataset
from dormant.engine import Progress, evaluate
from dormant.errors import DormantError
from dormant.store.files import atomic_write_bytes

SHOWN = 6  # inputs per kind whose CD masks the report shows


DEFAULT_DEFENSE_SHARE = 0.5
"""A ``defense_size`` left at its default takes at most this share of the test set, so a
small one (digits' 360 images) still leaves images to measure on."""


def defense_size(defenses, n_test: int) -> int:
    """The defender's clean test images out of ``n_test``: ``defense_size`` as the study set
    it, or its default capped at half the test set. The default is told by its value, not by
    whether a key set it: a spec read back from its dump sets every key, and its cell key
    (which hashes the value) must always mean the same images. Another size that leaves
    nothing to measure on is refused, naming the key and the limit."""
    size = defenses.defense_size
    if size == type(defenses).model_fields["defense_size"].default:
        return min(size, max(1, int(n_test * DEFAULT_DEFENSE_SHARE)))
    if size >= n_test:
        raise DormantError(f"defenses.defense_size {size} leaves no test images to measure on "
                           f"(the test set has {n_test}): set it below {n_test}, e.g. --set "
                           f"defenses.defense_size={max(10, n_test // 2)}, or raise test_size")
    return size


class Scanner:
    def __init__(self, spec, ds: Dataset, victim, out: Path, progress: Progress | None):
        self.spec, self.v, self.progress = spec, victim, progress
        self.d = spec.defenses
        self.trigger: Trigger = victim.planted.trigger
        self.target = spec.target
        dev = victim.x_clean.device
        n = len(ds.y_test)
        size = defense_size(self.d, n)
        g = torch.Generator().manual_seed(victim.seed)
        perm = torch.randperm(n, generator=g)
        d_ids, e_ids = perm[:size], perm[size:]
        x_test, y_test = ds.x_test.to(dev), ds.y_test.to(dev)
        self.x_def, self.y_def = x_test[d_ids.to(dev)], y_test[d_ids.to(dev)]
        self.x_eval, self.y_eval = x_test[e_ids.to(dev)], y_test[e_ids.to(dev)]
        self.art_dir = out / "artefacts"
        self._before: dict[str, dict] = {}

    # -- the plain metrics ------------------------------------------------------------
    def forget_acc(self, model: nn.Module, ids: torch.Tensor, poisoned: bool) -> float:
        x, y = self.v.training_set(poisoned)
        return round(evaluate(model, x, y, ids.to(x.device)).acc, 4)

    def _metrics(self, model: nn.Module, trigger: Trigger) -> dict:
        return {"clean_acc": round(evaluate(model, self.x_eval, self.y_eval).acc, 4),
                "asr": round(attack_success_rate(model, self.x_eval, self.y_eval, trigger,
                                                 self.target), 4)}

    # -- what a defense reads (see dormant.defenses.registry) --------------------------
    @property
    def num_classes(self) -> int:
        return self.v.num_classes

    @property
    def seed(self) -> int:
        return self.v.seed

    shown = SHOWN

    def metrics(self, model: nn.Module, trigger: Trigger | None = None) -> dict:
        return self._metrics(model, trigger or self.trigger)

    # -- the defenses --------------------------------------------------------------------
    def _run(self, stage: str, model: nn.Module, trigger: Trigger) -> tuple[dict, dict]:
        values, tensors = {}, {}
        for info, cfg in self.d.active(stage):
            if cfg is None:
                values.update(dict.fromkeys(info.columns))
                continue
            v, t = info.run(cfg, self, model, trigger)
            values.update(v)
            tensors.update(t)
        return values, tensors

    def mitigate(self, model: nn.Module, trigger: Trigger | None) -> dict:
        """What each mitigation (I-BAU) leaves of ``model`` after repairing it with the
        defender's clean images: its columns (ASR, clean accuracy), ``None`` when off."""
        return self._run("mitigate", model, trigger or self.trigger)[0]

    def _scan(self, name: str, model: nn.Module, trigger: Trigger | None, when: str) -> dict:
        trigger = trigger or self.trigger
        found, tensors = self._run("scan", model, trigger)
        values = {**self._metrics(model, trigger), **found}
        row = {f"{k}_{when}": v for k, v in values.items()}
        row[f"artefact_{when}"] = self._save(f"seed{self.v.seed}-{name}-{when}", tensors)
        return row

    def before(self, name: str, model: nn.Module, trigger: Trigger | None) -> dict:
        """The scan of a model no method has touched, done once per model and seed."""
        if name not in self._before:
            self._before[name] = self._scan(name, model, trigger, "before")
        return dict(self._before[name])

    def after(self, name: str, model: nn.Module) -> dict:
        return self._scan(name, model, None, "after")

    def _save(self, stem: str, tensors: dict) -> str | None:
        if not tensors:
            return None
        path = self.art_dir / f"{stem}.safetensors"
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, save({k: t.detach().cpu().contiguous()
                                       for k, t in tensors.items()}))
        return str(path.relative_to(self.art_dir.parent))
