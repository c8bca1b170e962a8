"""Fault injection for the crash and fault tests, off unless ``DORMANT_FAILPOINT`` is set.

``DORMANT_FAILPOINT=NAME`` kills the process at the point named ``NAME`` as ``kill -9``
would; ``DORMANT_FAILPOINT=hold:NAME`` stops the calling thread there for good, so a test can
kill the process from outside while it is mid-way; ``DORMANT_FAILPOINT=disk-full`` makes the
next checkpoint write fail half-way with ``ENOSPC``, as a full disk does. Production code pays
one environment lookup per point."""

from __future__ import annotations

import errno
import os
import signal
import threading

DISK_FULL = "disk-full"


def kill_point(name: str) -> None:
    """Die here, as ``kill -9`` would, when ``DORMANT_FAILPOINT`` is ``name``."""
    point = os.environ.get("DORMANT_FAILPOINT")
    if point == name:
        os.kill(os.getpid(), signal.SIGKILL)
    if point == f"hold:{name}":
        threading.Event().wait()


def disk_point(written: int) -> None:
    """Fail a checkpoint write after ``written`` bytes when the disk is to be "full"."""
    if os.environ.get("DORMANT_FAILPOINT") == DISK_FULL:
        raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} (after {written} bytes)")
