"""Attacks on unlearned models."""

from dormant.attacks.relearn import Curve, RelearnConfig, RelearnData, relearn

__all__ = ["Curve", "RelearnConfig", "RelearnData", "relearn"]
