"""Studies composed from the lower layers and the store.

Each name loads its submodule on first use (PEP 562): the command line reads settings
from here without importing torch."""


import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # also what a method's code revision follows (``unlearn.base``)
    from dormant.experiments.backdoor import run_backdoor
    from dormant.experiments.backdoor_spec import BackdoorSpec
    from dormant.experiments.relearn import run_relearn
    from dormant.experiments.spec import MethodEntry, RelearnSpec

_WHERE = {
    "BackdoorSpec": "backdoor_spec",
    "MethodEntry": "spec",
    "RelearnSpec": "spec",
    "run_backdoor": "backdoor",
    "run_relearn": "relearn",
}

__all__ = [
    "BackdoorSpec",
    "MethodEntry",
    "RelearnSpec",
    "run_backdoor",
    "run_relearn",
]


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
