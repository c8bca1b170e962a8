"""SISA versions in the model store.

A SISA version is its aggregate checkpoint (``models/NAME/vN.safetensors``, the ensemble as
one model, which every check loads), its assignment (``models/NAME/vN.assignment.safetensors``)
and one checkpoint per shard and slice. Those are content-addressed
(``models/NAME/shards/<sha256>.safetensors``) and shared between versions, so the checkpoints
a deletion did not retrain are the very same bytes in the new version. The ledger row that
wrote the version lists every one of these files with its sha256 (``role``: ``shard`` with
its ``shard`` and ``slice``, ``assignment``), so ``dormant ledger verify --store`` re-hashes
all of them, and its ``sisa`` block holds the plan and the costs."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

from dormant.errors import DormantError
from dormant.models import ModelSpec, create_model
from dormant.models.ensemble import member_name
from dormant.requests.version import Version
from dormant.store.checkpoint import read_checkpoint
from dormant.store.files import atomic_write_bytes, sha256_file
from dormant.store.sisa import assignment_bytes, read_assignment, state_bytes
from dormant.unlearn.sisa import Plan, Sisa

if TYPE_CHECKING:  # the store imports nothing of this file; this file needs only its paths
    from dormant.requests.store import ModelStore

SHARD = "shard"
ASSIGNMENT = "assignment"


def blob_rel(name: str, sha: str) -> str:
    return f"models/{name}/shards/{sha}.safetensors"


def _put(store: ModelStore, rel: str, sha: str, data: bytes) -> None:
    """A content-addressed file is written once; one whose bytes no longer match its name is
    written again."""
    path = store.path(rel)
    if not path.is_file() or sha256_file(path) != sha:
        atomic_write_bytes(path, data)


def write_parts(store: ModelStore, name: str, version: int, sisa: Sisa) -> list[dict]:
    """Write ``sisa``'s assignment and any shard checkpoint the store lacks; the ledger's
    ``files`` entries for them (assignment first)."""
    data = assignment_bytes(sisa.assignment)
    rel = store.assignment_rel(name, version)
    atomic_write_bytes(store.path(rel), data)
    files = [{"path": rel, "sha256": sha256_file(store.path(rel)), "role": ASSIGNMENT}]
    for s, stages in enumerate(sisa.checkpoints):
        for r, state in enumerate(stages):
            blob = state_bytes(state)
            sha = hashlib.sha256(blob).hexdigest()
            _put(store, blob_rel(name, sha), sha, blob)
            files.append({"path": blob_rel(name, sha), "sha256": sha, "role": SHARD,
                          "shard": s, "slice": r})
    return files


def added_parts(store: ModelStore, name: str, version: int, checkpoint: Path, side: dict
                ) -> tuple[list[dict], dict]:
    """``ModelStore.add``'s ``parts`` for a SISA checkpoint: its shards, slices and
    assignment come with it, and the row's ``sisa`` block; nothing for a single model."""
    if side.get("sisa") is None:
        return [], {}
    from dormant.store.sisa import load_sisa

    ensemble = load_sisa(checkpoint, side)
    files = write_parts(store, name, version, ensemble)
    return files, {"sisa": sisa_block(ensemble, files, {
        k: v for k, v in side["sisa"].items() if k != "plan"})}


def sisa_block(sisa: Sisa, files: list[dict], costs: dict) -> dict:
    """A SISA version's ledger ``sisa`` block: the plan, the assignment's hash, and the costs
    (``full_retrain_seconds``: what training every shard from scratch took, measured when the
    model was trained; ``retrain_seconds`` and ``steps``: what this version's shards took to
    train; a request's ``retrained`` stages)."""
    sha = next(f["sha256"] for f in files if f["role"] == ASSIGNMENT)
    return {"plan": sisa.plan.to_dict(), "assignment_sha256": sha,
            "trained_ids": len(sisa.assignment.trained()), **costs}


def is_sisa(v: Version) -> bool:
    return v.sisa is not None


def member_spec(spec: ModelSpec) -> ModelSpec:
    return ModelSpec(member_name(spec.name), spec.in_channels, spec.num_classes,
                     spec.image_size)


def initialiser(spec: ModelSpec):
    """``init(seed)``: a fresh member model of the ensemble ``spec``."""
    one = member_spec(spec)
    return lambda seed: create_model(one, seed=seed)


def read_sisa(store: ModelStore, v: Version, n_train: int) -> Sisa:
    """The trained ensemble of SISA version ``v``: its plan from the ledger, and its
    assignment and every shard checkpoint once their bytes hash to what the ledger recorded."""
    plan = Plan.from_dict(v.sisa["plan"])

    def verified(item: dict) -> Path:
        return store.verified(v, item)

    parts = [f for f in v.files if f["role"] == ASSIGNMENT]
    if len(parts) != 1:
        raise DormantError(f"{v.name} v{v.version} is a SISA version without one assignment "
                           f"in its ledger row {v.seq}")
    assignment = read_assignment(verified(parts[0]), n_train)
    grid: list[list[dict | None]] = [[None] * plan.slices for _ in range(plan.shards)]
    for f in v.files:
        if f["role"] == SHARD:
            grid[f["shard"]][f["slice"]] = f
    missing = [(s, r) for s, row in enumerate(grid) for r, f in enumerate(row) if f is None]
    if missing:
        raise DormantError(f"{v.name} v{v.version}: ledger row {v.seq} names no checkpoint for "
                           f"shard {missing[0][0]} slice {missing[0][1]}")
    stages = tuple(tuple(read_checkpoint(verified(f))[0] for f in row) for row in grid)
    return Sisa(plan, assignment, stages)

