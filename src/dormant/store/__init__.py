"""Checkpoints (safetensors + JSON sidecar), the model cache and results files.

Each name loads its submodule on first use (PEP 562): the command line reads settings
from here without importing torch."""


import importlib
from typing import TYPE_CHECKING

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


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
