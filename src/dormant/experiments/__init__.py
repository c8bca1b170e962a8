"""Studies composed from the lower layers and the store."""

from dormant.experiments.backdoor import run_backdoor
from dormant.experiments.backdoor_spec import BackdoorSpec
from dormant.experiments.relearn import run_relearn
from dormant.experiments.spec import MethodEntry, RelearnSpec

__all__ = ["BackdoorSpec", "MethodEntry", "RelearnSpec", "run_backdoor", "run_relearn"]
