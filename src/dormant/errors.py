"""The one exception type that the CLI turns into a single line and exit code 2, and the
check of a file path that every reader shares.

Exit codes: 2 for anything found before the work starts, the machine's faults included when
they can be seen then (a cache folder or ``--out`` that cannot be made or written); 1 for a
fault of the machine met mid-run (a full disk: one line naming the file, nothing half
written), or a study whose every cell failed. In a study, such a fault fails the cells it
meets (their rows are marked transient, and a rerun into the same ``--out`` retries them);
a cache that cannot be written costs only speed and is one ``warning:`` line."""

from __future__ import annotations

from pathlib import Path


class DormantError(ValueError):
    """Bad input from the user: the message names what is wrong and how to fix it."""


class DormantWarning(UserWarning):
    """A fault of the machine that costs speed, not correctness (a cache that cannot be
    written): the CLI prints it as one ``warning:`` line."""


def at_path(e: OSError, path: str | Path) -> OSError:
    """``e`` naming ``path`` when it names no file of its own (a write that failed half-way
    reports only its errno), so the one line the CLI prints says where."""
    if e.filename is not None:
        return e
    named = OSError(e.errno, e.strerror or str(e), str(path))
    named.__cause__ = e
    return named


_FIXES = {
    "ENOSPC": "free space on that disk, or point DORMANT_CACHE / --out to another one",
    "EDQUOT": "free space within your quota, or point DORMANT_CACHE / --out elsewhere",
    "EFBIG": "the file is larger than this system or its limits allow (ulimit -f)",
    "EACCES": "fix its permissions, or give a path you can write to",
    "EPERM": "fix its permissions, or give a path you can write to",
    "EROFS": "the file system is read-only: give a path on a writable one",
    "ENOTDIR": "a file stands where a folder must be: give another path",
}


def environment_line(e: OSError) -> str:
    """One line for an ``OSError`` of the machine (not of the input): what failed, where,
    and what to do, without a traceback."""
    import errno as _errno

    where = f": {e.filename}" if e.filename else ""
    fix = _FIXES.get(_errno.errorcode.get(e.errno or 0, ""), "fix the cause")
    return f"{e.strerror or e}{where}; {fix}, then rerun (nothing recorded was lost)"


def need_file(path: str | Path, what: str, hint: str = "check the path",
              suffix: str | None = None) -> Path:
    """``path`` when it is a file; otherwise one line saying what it is instead: a folder
    (with the first ``suffix`` file inside it as the example to give) or nothing at all."""
    path = Path(path)
    if path.is_file():
        return path
    if path.is_dir():
        # model.safetensors before model.extra.safetensors: the plainest name is the file
        found = sorted(path.glob(f"*{suffix}"), key=lambda p: (p.name.count("."), p.name)
                       )[:1] if suffix else []
        example = f", e.g. {found[0]}" if found else ""
        raise DormantError(f"{what} {path} is a folder; give the file itself{example}")
    raise DormantError(f"{what} {path} does not exist; {hint}")
