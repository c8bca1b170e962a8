"""Checkpoints (safetensors + JSON sidecar), the model cache and results files."""

from dormant.store.cache import ModelCache, cache_key
from dormant.store.checkpoint import load_model, read_checkpoint, save_checkpoint
from dormant.store.results import ResultsLog, append_row, read_rows

__all__ = [
    "ModelCache", "ResultsLog", "append_row", "cache_key", "load_model", "read_checkpoint",
    "read_rows", "save_checkpoint",
]
