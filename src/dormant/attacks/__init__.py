"""Attacks: the relearning attack, backdoor triggers and poisoned training sets."""

from dormant.attacks.poison import Poisoned, PoisonSpec, attack_success_rate, poison
from dormant.attacks.relearn import Curve, RelearnConfig, RelearnData, relearn
from dormant.attacks.triggers import Trigger

__all__ = ["Curve", "PoisonSpec", "Poisoned", "RelearnConfig", "RelearnData", "Trigger",
           "attack_success_rate", "poison", "relearn"]
