"""What a new user meets first: the files a run writes can be read and shared like any other
file, and the demo's console output fits one screen."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from dormant.store import files
from dormant.store.files import atomic_write_text


@pytest.fixture
def umask():
    """Sets the process umask for one test (the writer caches it) and puts it back."""
    old = os.umask(0o022)
    os.umask(old)

    def set_(mask: int) -> None:
        os.umask(mask)
        files._umask.cache_clear()

    yield set_
    os.umask(old)
    files._umask.cache_clear()


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_an_atomic_write_gets_the_mode_open_gives(tmp_path, umask):
    """mkstemp's 0600 made report.html owner-only beside 0644 figures: a new file now gets
    0666 less the umask, like open(); a file that exists keeps its mode."""
    umask(0o022)
    atomic_write_text(tmp_path / "report.html", "<p>hi</p>")
    with open(tmp_path / "figure.png", "w") as f:
        f.write("png")
    assert _mode(tmp_path / "report.html") == _mode(tmp_path / "figure.png") == 0o644
    umask(0o077)  # a user who keeps everything private gets that too
    atomic_write_text(tmp_path / "private.md", "x")
    assert _mode(tmp_path / "private.md") == 0o600
    umask(0o022)
    (tmp_path / "locked.json").write_text("{}")
    os.chmod(tmp_path / "locked.json", 0o640)
    atomic_write_text(tmp_path / "locked.json", "{}\n")  # rewritten: the user's mode stays
    assert _mode(tmp_path / "locked.json") == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "figure.png", "locked.json", "private.md", "report.html"]  # no temporary left
