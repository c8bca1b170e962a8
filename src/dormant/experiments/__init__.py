"""Studies composed from the lower layers and the store.

Each name loads its submodule on first use (PEP 562): the command line reads settings
from here without importing torch."""


from typing import TYPE_CHECKING

from dormant import lazy

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


__getattr__, __dir__ = lazy.names(__name__, _WHERE)
