"""Rich progress bars driven by the engine's ``progress(task, done, total)`` callback."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class ProgressBars:
    """One bar per task label; a finished bar is removed so long studies stay readable. The
    study's ``cells`` bar (every executor drives it) carries the ETA of the whole study."""

    def __init__(self, console: Console) -> None:
        self.bars = Progress(
            TextColumn("{task.description:<22}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=console,
            transient=True,
            # rich estimates speed over the last 30 s by default: a study finishing a cell a
            # minute would never show an ETA; over the whole run it always does
            speed_estimate_period=7 * 24 * 3600,
        )
        self.tasks: dict[str, int] = {}

    def __enter__(self) -> ProgressBars:
        self.bars.start()
        return self

    def __exit__(self, *exc) -> None:
        self.bars.stop()

    def __call__(self, label: str, done: int, total: int) -> None:
        if label not in self.tasks:
            self.tasks[label] = self.bars.add_task(label, total=total)
        self.bars.update(self.tasks[label], completed=done, total=total)
        if done >= total:
            self.bars.remove_task(self.tasks.pop(label))
