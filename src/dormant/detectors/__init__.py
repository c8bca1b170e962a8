"""Per-sample detectors of poisoned training images (``dormant inspect``)."""

from dormant.detectors import cognitive_distillation, spectral  # noqa: F401 - registrations
from dormant.detectors.registry import (
    Detection,
    available_detectors,
    get_detector,
    register_detector,
)

__all__ = ["Detection", "available_detectors", "get_detector", "register_detector"]
