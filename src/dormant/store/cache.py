"""Content-addressed model cache: the original and oracle are trained once per
(data, split, model, recipe, seed) and reused by every later run."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import safetensors.torch
import torch
from torch import nn

from dormant.errors import DormantError
from dormant.models import ModelSpec
from dormant.store.checkpoint import load_model, save_checkpoint
from dormant.store.files import atomic_write_bytes


def cache_key(**parts) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


class ModelCache:
    def __init__(self, root: Path) -> None:
        self.root = Path(root) / "models"

    def path(self, key: str) -> Path:
        return self.root / f"{key}.safetensors"

    def load(
        self, key: str, spec: ModelSpec, device: torch.device | str = "cpu"
    ) -> tuple[nn.Module, dict, dict[str, torch.Tensor]] | None:
        """``(model, meta, extras)`` or None on a miss; a damaged entry counts as a miss."""
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            model, meta = load_model(path, spec, device)
            extra = path.with_suffix(".extra.safetensors")
            extras = safetensors.torch.load_file(extra) if extra.is_file() else {}
        except (DormantError, OSError, ValueError, KeyError):
            return None
        return model, meta, extras

    def save(
        self,
        key: str,
        model: nn.Module,
        spec: ModelSpec,
        meta: dict,
        extras: dict[str, torch.Tensor] | None = None,
    ) -> Path:
        path = self.path(key)
        if extras:
            blob = safetensors.torch.save({k: v.contiguous().cpu() for k, v in extras.items()})
            atomic_write_bytes(path.with_suffix(".extra.safetensors"), blob)
        # weights last: their presence is what marks the entry complete
        return save_checkpoint(path, model, spec, {**meta, "cache_key": key})
