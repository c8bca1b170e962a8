"""The frozen protocol: the verdicts' rules and thresholds and calibration's, read from the
versioned ``protocol.yaml`` beside this file, so that a row can record exactly which rules
it was made and judged under (its ``protocol`` field: version and hash).

Everything that decides a verdict reads its numbers from :data:`PROTOCOL`; nothing else
defines them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources

import yaml


@dataclass(frozen=True)
class Protocol:
    version: int
    sha256: str
    choice_seeds: tuple[int, ...]
    report_seeds: tuple[int, ...]
    relearn_excess: float
    forget_margin: float
    confidence: float
    utility_margin: float
    max_extensions: int

    @property
    def tag(self) -> str:
        """``v1:abcdef123456``: what every row records."""
        return f"v{self.version}:{self.sha256[:12]}"


def load_protocol(text: str) -> Protocol:
    raw = yaml.safe_load(text)
    v, c = raw["verdicts"], raw["calibration"]
    return Protocol(
        version=int(raw["version"]), sha256=hashlib.sha256(text.encode()).hexdigest(),
        choice_seeds=tuple(raw["choice_seeds"]), report_seeds=tuple(raw["report_seeds"]),
        relearn_excess=float(v["relearn_excess"]), forget_margin=float(v["forget_margin"]),
        confidence=float(v["confidence"]), utility_margin=float(c["utility_margin"]),
        max_extensions=int(c["max_extensions"]))


PROTOCOL = load_protocol(
    resources.files("dormant.experiments").joinpath("protocol.yaml").read_text("utf-8"))
