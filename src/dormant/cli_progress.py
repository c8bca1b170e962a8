"""Progress driven by the engine's ``progress(task, done, total)`` callback: rich's live bars
on a terminal, which replace themselves; periodic plain log lines when the output is a pipe
or a file, where rich's live display prints nothing at all."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable

from rich.console import Console, RenderableType
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text


def clock(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``, ``2 h 01 min``."""
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


class _Task:
    def __init__(self, now: float) -> None:
        self.start = now
        self.last_time = now
        self.last_step = -1  # the tenth of the total last logged
        self.done = 0
        self.total = 0


class _Bars(Progress):
    """rich's bars with one line of status under them (the last cell a study finished),
    replaced in place like the bars."""

    status: Text | None = None

    def get_renderables(self) -> Iterable[RenderableType]:
        yield from super().get_renderables()
        if self.status is not None:
            yield self.status


class ProgressBars:
    """One bar per task label; a finished bar is removed so long studies stay readable. The
    study's ``cells`` bar (every executor drives it) carries the ETA of the whole study.

    When ``console`` is not a terminal (``live=None`` asks it), each task instead logs a
    plain line at its start, every ``every`` of its total (10%), at least every ``interval``
    seconds (a background beat covers a phase that reports nothing for a while, such as an
    evaluation), and at its end, with the elapsed time (and, for ``cells``, the ETA from the
    whole run's speed).

    ``study=True`` (a study's thousands of training runs) logs only the ``cells`` task's
    tenths off a terminal, at least a minute apart; the other tasks appear in the beat line,
    which names the one in progress, and the beat's gap grows to a tenth of the time run so
    far, so an hour's study logs tens of lines, not hundreds."""

    def __init__(self, console: Console, *, live: bool | None = None, every: float = 0.1,
                 interval: float = 30.0, clock_fn: Callable[[], float] = time.monotonic,
                 study: bool = False) -> None:
        self.console = console
        self.live = console.is_terminal if live is None else live
        # a study's log says where it stands at most once a minute
        self.every, self.interval, self.now = every, max(interval, 60.0) if study else \
            interval, clock_fn
        self.study = study
        self.started = clock_fn()
        self.current: tuple[str, int, int] | None = None  # the latest task but cells (study)
        self.bars = _Bars(
            TextColumn("{task.description:<22}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=console,
            transient=True,
            # rich estimates speed over the last 30 s by default: a study finishing a cell a
            # minute would never show an ETA; over the whole run it always does
            speed_estimate_period=7 * 24 * 3600,
        )
        self.tasks: dict[str, int] = {}
        self.logged: dict[str, _Task] = {}
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.beat: threading.Thread | None = None

    def __enter__(self) -> ProgressBars:
        if self.live:
            self.bars.start()
        elif self.interval > 0:
            self.beat = threading.Thread(target=self._beat_loop, daemon=True,
                                         name="progress-log")
            self.beat.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.live:
            self.bars.stop()
        self.stopped.set()
        if self.beat is not None:
            self.beat.join(timeout=5)

    def _beat_loop(self) -> None:
        while not self.stopped.wait(min(self.interval, 5.0)):
            self.beat_once()

    def beat_once(self) -> None:
        """Log every open task that has said nothing for ``interval`` seconds (a study: the
        cells task alone, naming the task in progress, after a tenth of the time so far)."""
        now = self.now()
        with self.lock:
            if self.study:
                task = self.logged.get("cells")
                if task is not None and now - task.last_time >= max(
                        self.interval, (now - self.started) / 10):
                    task.last_time = now
                    line = self._line("cells", task, now) + ", still running"
                    if self.current is not None:
                        label, done, total = self.current
                        line += f" ({label} {done:,}/{total:,})"
                    self.say(line)
                return
            for label, task in list(self.logged.items()):
                if now - task.last_time >= self.interval:
                    task.last_time = now
                    self.say(self._line(label, task, now) + ", still running")

    def say(self, text: str, wrap: bool = False) -> None:
        """A line above the bars (or in the log); ``wrap``: broken between words at the
        console's width (prose), not by the terminal mid-word (a line holding a path keeps
        it whole for copying)."""
        self.console.print(text, highlight=False, markup=False, soft_wrap=not wrap)

    def status(self, text: str) -> None:
        """A line under the bars that the next one replaces (on a terminal; nothing in a
        log, where it would be one more line)."""
        if self.live:
            self.bars.status = Text(text, no_wrap=True, overflow="ellipsis")
            self.bars.refresh()

    def __call__(self, label: str, done: int, total: int) -> None:
        if not self.live:
            if self.study and label != "cells":
                with self.lock:
                    self.current = (label, done, total)
                return
            self._log(label, done, total)
            return
        if label not in self.tasks:
            self.tasks[label] = self.bars.add_task(label, total=total)
        self.bars.update(self.tasks[label], completed=done, total=total)
        if done >= total:
            self.bars.remove_task(self.tasks.pop(label))

    def _log(self, label: str, done: int, total: int) -> None:
        now = self.now()
        with self.lock:
            if label == "cells":  # a cell ended: a task of it that died is over too
                for other in [k for k in self.logged if k != "cells"]:
                    del self.logged[other]
            task = self.logged.get(label)
            if task is None or done < task.done:  # new, or the label starts over
                task = self.logged[label] = _Task(now)
            task.done, task.total = done, total
            parts = max(1, round(1 / self.every))
            step = done * parts // total if total > 0 else 0
            finished = done >= total
            quiet = now - task.last_time
            if self.study:
                # each tenth, but not within interval seconds of the last line, and otherwise
                # after a tenth of the time so far: a two-minute demo gets a few lines, a
                # day-long study of thousands of cells some tens
                show = (task.last_step < 0 or step > task.last_step and quiet >= self.interval
                        or quiet >= max(self.interval, (now - self.started) / 10))
            else:
                show = step > task.last_step or quiet >= self.interval
            if finished or show:
                task.last_step, task.last_time = step, now
                self.say(self._line(label, task, now))
            if finished:
                del self.logged[label]

    @staticmethod
    def _line(label: str, task: _Task, now: float) -> str:
        elapsed = now - task.start
        done, total = task.done, task.total
        pct = 100 * done / total if total > 0 else 100.0
        line = f"{label}: {done:,}/{total:,} ({pct:.0f}%) in {clock(elapsed)}"
        if label == "cells" and 0 < done < total:
            line += f", eta {clock(elapsed / done * (total - done))}"
        return line
