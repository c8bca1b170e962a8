"""Studies composed from the lower layers and the store."""

from dormant.experiments.relearn import run_relearn
from dormant.experiments.spec import RelearnSpec

__all__ = ["RelearnSpec", "run_relearn"]
