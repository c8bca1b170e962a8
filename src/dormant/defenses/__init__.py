"""Backdoor defenses: Neural Cleanse, Cognitive Distillation, I-BAU and the targeted universal
perturbations. Each defense is one file that registers itself (``register_defense``); see
``dormant.defenses.registry``."""

from dormant.defenses.cognitive_distillation import (
    CognitiveDistillationConfig,
    cd_flags,
    cd_scores,
    detection_auroc,
    distil_masks,
)
from dormant.defenses.ibau import IBAUConfig, hypergradient, ibau, universal_perturbation
from dormant.defenses.neural_cleanse import (
    NCMitigationConfig,
    NeuralCleanseConfig,
    Reversed,
    mad_outliers,
    mitigate,
    reverse_triggers,
)
from dormant.defenses.registry import (
    Control,
    DefenseInfo,
    available_defenses,
    get_defense,
    register_defense,
)
from dormant.defenses.universal_targets import TargetedUAPConfig, targeted_success

__all__ = ["NeuralCleanseConfig", "Reversed", "mad_outliers", "reverse_triggers"]
__all__ += ["CognitiveDistillationConfig", "cd_flags", "cd_scores", "detection_auroc",
            "distil_masks"]
__all__ += ["IBAUConfig", "NCMitigationConfig", "hypergradient", "ibau", "mitigate",
            "universal_perturbation"]
__all__ += ["TargetedUAPConfig", "targeted_success"]
__all__ += ["Control", "DefenseInfo", "available_defenses", "get_defense", "register_defense"]
