"""A model version as the ledger records it: what the store, the deleters and SISA's layout
share, with no dependence on any of them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Version:
    name: str
    version: int
    rel: str  # the checkpoint's path relative to the store root, as the ledger records it
    sha256: str
    seq: int  # the ledger row that wrote it
    promoted: bool
    request_id: str | None = None  # the request that made it; None for an added model
    from_version: int | None = None
    files: tuple[dict, ...] = ()  # every file the ledger row recorded for it
    sisa: dict | None = None  # a SISA version's plan and costs (``requests.sharded``)
    lineage: int = 1
    """Which lineage of the name it belongs to: 1 for the first model added, one more for each
    model added with ``new_lineage`` (a request's version is in its parent's lineage)."""


def own_files(files: list[dict]) -> tuple[dict, ...]:
    """A row's files that belong to the version it wrote (not the ``original`` it came from)."""
    return tuple(f for f in files if f.get("role") != "original")


