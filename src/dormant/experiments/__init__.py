"""Studies composed from the lower layers and the store."""

from dormant.experiments.relearn import run_relearn
from dormant.experiments.spec import MethodEntry, RelearnSpec

__all__ = ["MethodEntry", "RelearnSpec", "run_relearn"]
