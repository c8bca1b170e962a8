"""Atomic file writes (a temp file in the same folder, fsync, then ``os.replace``) and file
hashes."""

from __future__ import annotations

import functools
import hashlib
import os
import stat
import tempfile
from pathlib import Path

from dormant.errors import at_path
from dormant.failpoints import disk_point


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """``data`` at ``path`` whole or not at all; a failed write (a full disk) leaves no
    temporary file behind and raises an ``OSError`` that names ``path``."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise at_path(e, path.parent) from None
    try:
        with os.fdopen(fd, "wb") as f:
            if path.suffix == ".safetensors":
                f.write(data[: len(data) // 2])
                disk_point(len(data) // 2)
                f.write(data[len(data) // 2:])
            else:
                f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _mode_for(path))  # mkstemp's 0600 would hide a report from its readers
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise at_path(e, path) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _mode_for(path: Path) -> int:
    """The mode ``path`` already has (a file a user locked down stays so), else the mode
    ``open()`` gives a new file: 0666 less the umask, 0644 for most users, the same as the
    figures and results.jsonl written beside it."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return 0o666 & ~_umask()


@functools.cache
def _umask() -> int:
    """The process's umask: read from /proc where Linux shows it, else set and put back (the
    only portable way, racy only against another thread creating a file at that instant)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
