"""A model's data manifest: which contributor brought each training id.

A manifest is a CSV file with the header ``id,contributor`` and one line per training id
(ids are the dataset's training indices, the same ones deletion requests name). The store
keeps it beside the checkpoint it came with, hashed in the ``model-added`` ledger row, and
every version of that lineage reads it: a request's report names the contributors of the ids
it deletes, and ``dormant inspect`` ranks contributors by the flagged share of their images.
"""

from __future__ import annotations

import csv
import io
import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from dormant.errors import DormantError, need_file

HEADER = ("id", "contributor")
_NAME = re.compile(r"[^\x00-\x1f\x7f]{1,128}")
MAX_BYTES = 256 * 1024 * 1024


RESERVED = ("unlisted", "(no manifest)")
"""Labels the reports give ids without a contributor; no contributor may take them."""


def parse_manifest(text: str, source: str = "manifest") -> dict[int, str]:
    """``{id: contributor}`` from a manifest's text; anything malformed is one line naming
    the line and how to fix it."""
    rows = csv.reader(io.StringIO(text.removeprefix("\ufeff")))
    try:
        head = next(rows, None)
        if head is None or tuple(c.strip() for c in head) != HEADER:
            raise DormantError(f"{source}: the first line must be 'id,contributor', got "
                               f"{','.join(head or [])!r}")
        out: dict[int, str] = {}
        for row in rows:
            n = rows.line_num
            if not row:
                continue
            if len(row) != 2:
                raise DormantError(f"{source} line {n}: expected 'id,contributor', got "
                                   f"{len(row)} fields")
            raw, who = row[0].strip(), row[1].strip()
            if not (raw.isascii() and raw.isdigit()):
                raise DormantError(f"{source} line {n}: id {raw[:20]!r} is not a "
                                   "non-negative integer")
            if not _NAME.fullmatch(who) or who in RESERVED:
                raise DormantError(f"{source} line {n}: the contributor must be 1-128 "
                                   f"printable characters, and not {' or '.join(RESERVED)}")
            i = int(raw)
            if i in out:
                raise DormantError(f"{source} line {n}: id {i} is listed twice (first for "
                                   f"{out[i]!r}); give each id one contributor")
            out[i] = who
    except csv.Error as e:
        raise DormantError(f"{source} line {rows.line_num}: not CSV ({e})") from None
    if not out:
        raise DormantError(f"{source} lists no ids; write one 'id,contributor' line per "
                           "training id")
    return out


def read_manifest(path: Path) -> dict[int, str]:
    path = Path(path)
    need_file(path, "manifest")
    if path.stat().st_size > MAX_BYTES:
        raise DormantError(f"manifest {path} is over {MAX_BYTES >> 20} MiB")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DormantError(f"manifest {path} is not UTF-8 text; write it as a CSV file "
                           "'id,contributor'") from None
    return parse_manifest(text, str(path))


def manifest_text(manifest: dict[int, str]) -> str:
    """The canonical CSV (ids ascending), the bytes the store hashes."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(HEADER)
    for i in sorted(manifest):
        w.writerow([i, manifest[i]])
    return buf.getvalue()


def check_covers(manifest: dict[int, str], n_train: int, source: str = "the manifest") -> None:
    """Every id of a training set of ``n_train`` images, and no other, has a contributor."""
    outside = [i for i in manifest if i >= n_train]
    if outside:
        raise DormantError(f"{source} names id {min(outside)}, outside the training set's "
                           f"{n_train} images; is it the manifest of this dataset?")
    if len(manifest) != n_train:
        missing = next(i for i in range(n_train) if i not in manifest)
        raise DormantError(f"{source} gives {len(manifest)} of the training set's {n_train} "
                           f"ids a contributor (id {missing} has none); list every id")


def contributors(manifest: dict[int, str] | None, ids: Iterable[int]) -> dict[str, int]:
    """How many of ``ids`` each contributor brought, most first (``unlisted`` for ids the
    manifest does not name); empty without a manifest."""
    if manifest is None:
        return {}
    counts = Counter(manifest.get(int(i), "unlisted") for i in ids)
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
