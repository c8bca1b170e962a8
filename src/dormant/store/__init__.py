"""Checkpoints (safetensors + JSON sidecar), the model cache and results files.

Each name loads its submodule on first use (PEP 562): the command line reads settings
from here without importing torch."""


from typing import TYPE_CHECKING

from dormant import lazy

if TYPE_CHECKING:  # also what a method's code revision follows (``unlearn.base``)
    from dormant.store.cache import ModelCache, cache_key
    from dormant.store.checkpoint import load_model, read_checkpoint, save_checkpoint
    from dormant.store.results import ResultsLog, append_row, read_rows

_WHERE = {
    "ModelCache": "cache",
    "ResultsLog": "results",
    "append_row": "results",
    "cache_key": "cache",
    "load_model": "checkpoint",
    "read_checkpoint": "checkpoint",
    "read_rows": "results",
    "save_checkpoint": "checkpoint",
}

__all__ = [
    "ModelCache",
    "ResultsLog",
    "append_row",
    "cache_key",
    "load_model",
    "read_checkpoint",
    "read_rows",
    "save_checkpoint",
]


__getattr__, __dir__ = lazy.names(__name__, _WHERE)
