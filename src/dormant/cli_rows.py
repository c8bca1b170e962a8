"""The demo's console while it runs: one line per stage (each method's calibration, the
cells; an original short of its fit target gets its note from the caller), not one per cell,
so that its whole output fits one screen; the latest cell shows in the status line under the
progress bars, and a failed one is printed."""

from __future__ import annotations

from collections.abc import Callable

from dormant.cli_progress import ProgressBars, clock
from dormant.experiments.calibrate import calibration_line


class StageLines:
    """Fed every row as it lands (``row``); ``row_line`` is the per-cell line the status
    shows and a failed cell prints."""

    def __init__(self, bars: ProgressBars, row_line: Callable[[dict], str]) -> None:
        self.bars, self.row_line = bars, row_line
        self.calibrated: set = set()
        self.ok = self.failed = 0

    def row(self, r: dict) -> None:
        for c in r.get("calibration") or []:
            key = (r.get("forget"), r.get("method"), c.get("stage"))
            if key not in self.calibrated:
                self.calibrated.add(key)
                self.bars.say(calibration_line(c), wrap=True)
        if r.get("status") == "failed":
            self.failed += 1
            self.bars.say(self.row_line(r))
        else:
            self.ok += 1
            self.bars.status(f"last cell: {self.row_line(r).strip()}")

    def summary(self, seconds: float) -> str:
        n = self.ok + self.failed
        return (f"{n} cell{'s' * (n != 1)} in {clock(seconds)}: {self.ok} ok, "
                f"{self.failed} failed")


def wrote_line(paths: dict, out, seconds: float) -> str:
    """The report's files in one line: the page to open, then what lies beside it."""
    names = [p.name for k, p in paths.items() if k != "html"]
    figures = sum(n.endswith(".png") for n in names)
    rest = [n for n in names if not n.endswith(".png")] + ["results.jsonl"]
    return (f"wrote {paths['html']} in {clock(seconds)}; beside it {', '.join(rest)} and "
            f"{figures} figure{'s' * (figures != 1)}")
