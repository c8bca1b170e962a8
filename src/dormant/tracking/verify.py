"""``dormant ledger verify``'s check of the registry mirrors a ledger records."""

from __future__ import annotations

from pathlib import Path

from dormant.errors import DormantError


def mirror_problems(book, ledger: Path, store: Path | None) -> tuple[list[str], int]:
    """Every disagreement of the mirrors ``book`` records, one line each, and how many
    mirrors were checked. A ledger with no mirror needs neither MLflow nor its store."""
    from dormant.tracking.mirror import check_all, mirrors

    found = mirrors(book)
    if not found:
        return [], 0
    root = store
    if root is None and ledger.is_file() and (ledger.parent / "store.json").is_file():
        root = ledger.parent
    names = ", ".join(sorted(found))
    if root is None:
        raise DormantError(f"the ledger records a registry mirror of {names}; checking it "
                           "needs the store: give --store STORE (or --no-mirror)")
    from dormant.requests import ModelStore
    from dormant.tracking.client import INSTALL

    try:
        import mlflow  # noqa: F401
    except ImportError:
        raise DormantError(f"the ledger records a registry mirror of {names}; checking it "
                           f"needs MLflow: {INSTALL} (or pass --no-mirror)") from None
    st = ModelStore(root, ledger if ledger.is_file() else None)
    return check_all(st), len(found)
