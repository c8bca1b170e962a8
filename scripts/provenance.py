"""The ``meta.json`` a measurement script writes beside its rows: the command, the commit, the
seeds and the machine, so that every committed number says where it came from."""

from __future__ import annotations

import json
import platform
import subprocess
from pathlib import Path

import torch


def write_meta(out: Path, command: str, rows: int, seeds: list[int], **extra) -> None:
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True
                            ).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "src"], capture_output=True,
                           text=True).stdout.strip()
    (out / "meta.json").write_text(json.dumps({
        "command": command, "commit": commit, "uncommitted_source_changes": bool(dirty),
        "rows": rows, "seeds": seeds, **extra,
        "machine": f"{platform.machine()}, cpu, {torch.get_num_threads()} threads, torch "
                   f"{torch.__version__}"}, indent=1) + "\n")


def write_rows(out: Path, rows: list[dict], command: str, seeds: list[int], **extra) -> None:
    """``rows`` as ``out/rows.jsonl`` (each also printed) and their ``meta.json``."""
    with open(out / "rows.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
            print(json.dumps(r))
    write_meta(out, command, len(rows), seeds, **extra)
