"""Backdoor defenses: Neural Cleanse (more to come with the backdoor study)."""

from dormant.defenses.neural_cleanse import (
    NeuralCleanseConfig,
    Reversed,
    mad_outliers,
    reverse_triggers,
)

__all__ = ["NeuralCleanseConfig", "Reversed", "mad_outliers", "reverse_triggers"]
