"""What the backdoor study measures on every model: clean accuracy and ASR on the evaluation
half of the test set, and the three defenses run with the defender's clean half.

The defender never sees the evaluation images, and no metric is computed on the defender's:
Neural Cleanse and I-BAU use ``defense_size`` clean test images, Cognitive Distillation's
AUROC is measured on evaluation images (clean vs. triggered).
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save
from torch import nn

from dormant.attacks import Trigger, attack_success_rate
from dormant.data import Dataset
from dormant.defenses import (
    CognitiveDistillationConfig,
    IBAUConfig,
    NeuralCleanseConfig,
    cd_scores,
    distil_masks,
    ibau,
    reverse_triggers,
)
from dormant.engine import Progress, evaluate
from dormant.errors import DormantError
from dormant.metrics import auroc
from dormant.store.files import atomic_write_bytes

SHOWN = 6  # inputs per kind whose CD masks the report shows


class Scanner:
    def __init__(self, spec, ds: Dataset, victim, out: Path, progress: Progress | None):
        self.spec, self.v, self.progress = spec, victim, progress
        self.d = spec.defenses
        self.trigger: Trigger = spec.attack().poison.trigger
        self.target = spec.target
        dev = victim.x_clean.device
        n = len(ds.y_test)
        if self.d.defense_size >= n:
            raise DormantError(f"defense_size {self.d.defense_size} leaves no test images to "
                               f"measure on (the test set has {n}); lower it or raise "
                               "test_size")
        g = torch.Generator().manual_seed(victim.seed)
        perm = torch.randperm(n, generator=g)
        d_ids, e_ids = perm[: self.d.defense_size], perm[self.d.defense_size :]
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

    # -- the defenses --------------------------------------------------------------------
    def _nc(self, model: nn.Module) -> tuple[dict, dict]:
        if not self.d.nc:
            return {"nc_index": None, "nc_flag": None, "nc_flagged": None}, {}
        cfg = NeuralCleanseConfig(epochs=self.d.nc_epochs, batch_size=self.d.nc_batch)
        ids = torch.arange(min(self.d.nc_images, len(self.y_def)))
        r = reverse_triggers(model, self.x_def, self.y_def, ids,
                             self.v.num_classes, cfg, seed=self.v.seed, progress=self.progress)
        return ({"nc_index": round(float(r.class_index[self.target]), 4),
                 "nc_flag": self.target in r.flagged, "nc_flagged": r.flagged},
                {"nc_masks": r.masks, "nc_patterns": r.patterns, "nc_norms": r.norms})

    def _cd(self, model: nn.Module, trigger: Trigger) -> tuple[dict, dict]:
        if not self.d.cd:
            return {"cd_auroc": None}, {}
        others = torch.nonzero(self.y_eval != self.target).flatten()
        half = min(self.d.cd_images // 2, len(others) // 2)
        clean = self.x_eval[others[:half]]
        triggered = trigger.stamp(self.x_eval[others[half : 2 * half]])
        cfg = CognitiveDistillationConfig.for_resolution(*clean.shape[2:],
                                                         steps=self.d.cd_steps)
        m_clean = distil_masks(model, clean, cfg=cfg, seed=self.v.seed)
        m_bad = distil_masks(model, triggered, cfg=cfg, seed=self.v.seed + 1)
        # a small mask is the suspect sign, so poisoned inputs should score higher on -norm
        score = auroc(-cd_scores(m_clean), -cd_scores(m_bad))
        return ({"cd_auroc": round(score, 4)},
                {"cd_inputs_clean": clean[:SHOWN].cpu(), "cd_masks_clean": m_clean[:SHOWN],
                 "cd_inputs_poisoned": triggered[:SHOWN].cpu(),
                 "cd_masks_poisoned": m_bad[:SHOWN]})

    def ibau(self, model: nn.Module, trigger: Trigger | None) -> dict:
        """ASR and clean accuracy left after I-BAU mitigates ``model`` with the defender's
        clean images."""
        if not self.d.ibau:
            return {"ibau_asr": None, "ibau_clean_acc": None}
        cfg = IBAUConfig(rounds=self.d.ibau_rounds)
        fixed = ibau(model, self.x_def, self.y_def, torch.arange(len(self.y_def)), cfg,
                     seed=self.v.seed)
        m = self._metrics(fixed, trigger or self.trigger)
        return {"ibau_asr": m["asr"], "ibau_clean_acc": m["clean_acc"]}

    def _scan(self, name: str, model: nn.Module, trigger: Trigger | None, when: str) -> dict:
        trigger = trigger or self.trigger
        nc, nc_t = self._nc(model)
        cd, cd_t = self._cd(model, trigger)
        values = {**self._metrics(model, trigger), **nc, **cd}
        row = {f"{k}_{when}": v for k, v in values.items()}
        row[f"artefact_{when}"] = self._save(f"seed{self.v.seed}-{name}-{when}", {**nc_t, **cd_t})
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
