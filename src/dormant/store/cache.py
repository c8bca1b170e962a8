"""Content-addressed artefact cache: models (the original, the oracle, every unlearned model)
and JSON records (a calibration, an analysis) are built once per key and reused by every
later cell, run and worker.

Many workers may ask for the same key at once, on one machine or on a cluster's shared
storage: ``build_model`` / ``build_record`` take a per-key lock (``fcntl.flock`` on
``locks/KEY.lock``, released by the kernel if the holder dies), look again, and only then
build. Every completed build appends one line to ``builds.jsonl`` (key, kind, seconds, pid),
which is how a test proves each artefact was built exactly once and how ``dormant plan``
reads measured build times.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from dormant.errors import DormantError
from dormant.store.checkpoint import load_model, save_checkpoint
from dormant.store.files import atomic_write_bytes, atomic_write_text

if TYPE_CHECKING:
    import torch
    from torch import nn

    from dormant.models import ModelSpec

RECORD_FORMAT = 1
"""Bump when a record's layout changes (a calibration's or an analysis's fields)."""


def cache_key(**parts) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def append_line(path: Path, line: str) -> None:
    """One ``line`` appended under an exclusive lock, so concurrent writers never interleave;
    a torn tail left by a writer that died mid-line is cut off first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            if size:
                f.seek(size - 1)
                if f.read(1) != b"\n":
                    f.seek(0)
                    data = f.read()
                    f.truncate(data.rfind(b"\n") + 1)
            f.seek(0, os.SEEK_END)
            f.write(line.encode() + b"\n")
            f.flush()
            os.fsync(f.fileno())
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class ModelCache:
    def __init__(self, root: Path) -> None:
        self.base = Path(root)
        self.root = self.base / "models"
        self.records = self.base / "records"
        self.builds = self.base / "builds.jsonl"

    def path(self, key: str) -> Path:
        return self.root / f"{key}.safetensors"

    @contextlib.contextmanager
    def lock(self, key: str) -> Iterator[None]:
        """Exclusive while held, across processes and machines sharing the folder."""
        path = self.base / "locks" / f"{key}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def load(
        self, key: str, spec: ModelSpec, device: torch.device | str = "cpu"
    ) -> tuple[nn.Module, dict, dict[str, torch.Tensor]] | None:
        """``(model, meta, extras)`` or None on a miss; a damaged entry counts as a miss."""
        import safetensors.torch

        path = self.path(key)
        if not path.is_file():
            return None
        try:
            model, meta = load_model(path, spec, device)
            extra = path.with_suffix(".extra.safetensors")
            extras = safetensors.torch.load_file(extra) if extra.is_file() else {}
        except (DormantError, OSError, ValueError, KeyError):
            return None
        return model, meta, extras

    def save(
        self,
        key: str,
        model: nn.Module,
        spec: ModelSpec,
        meta: dict,
        extras: dict[str, torch.Tensor] | None = None,
    ) -> Path:
        import safetensors.torch

        path = self.path(key)
        if extras:
            blob = safetensors.torch.save({k: v.contiguous().cpu() for k, v in extras.items()})
            atomic_write_bytes(path.with_suffix(".extra.safetensors"), blob)
        # the weights' file appears whole (written aside, then renamed); an entry whose
        # files do not load counts as missing and is built again
        return save_checkpoint(path, model, spec, {**meta, "cache_key": key})

    def build_model(self, key: str, spec: ModelSpec, device: torch.device | str,
                    train: Callable[[], tuple[nn.Module, dict]], meta: dict
                    ) -> tuple[nn.Module, dict[str, torch.Tensor]]:
        """``(model, extras)`` for ``key``: loaded, or trained by ``train()`` exactly once
        however many workers ask at the same time."""
        hit = self.load(key, spec, device)
        if hit is None:
            with self.lock(key):
                hit = self.load(key, spec, device)  # another worker may have built it
                if hit is None:
                    t0 = time.perf_counter()
                    model, extras = train()
                    self.save(key, model, spec, meta, extras)
                    self._built(key, meta.get("kind", "model"), time.perf_counter() - t0,
                                meta.get("method"))
                    return model, extras
        return hit[0], hit[2]

    def build_models(self, keys: list[str], spec: ModelSpec, device: torch.device | str,
                     train: Callable[[list[int]], list[nn.Module]], meta: dict
                     ) -> list[nn.Module]:
        """The models of ``keys``: each loaded, or, for the ones missing, trained together by
        ``train(positions)`` exactly once however many workers ask (their locks are taken in
        key order, so two workers asking for overlapping groups cannot deadlock)."""
        got = {i: self.load(k, spec, device) for i, k in enumerate(keys)}
        missing = [i for i, h in got.items() if h is None]
        if missing:
            with contextlib.ExitStack() as held:
                for k in sorted({keys[i] for i in missing}):
                    held.enter_context(self.lock(k))
                for i in missing:
                    got[i] = self.load(keys[i], spec, device)
                still = [i for i in missing if got[i] is None]
                if still:
                    t0 = time.perf_counter()
                    models = train(still)
                    share = (time.perf_counter() - t0) / len(still)
                    for i, m in zip(still, models, strict=True):
                        self.save(keys[i], m, spec, meta)
                        self._built(keys[i], meta.get("kind", "model"), share)
                        got[i] = (m, meta, {})
        return [got[i][0] for i in range(len(keys))]

    def record_path(self, key: str) -> Path:
        # the format version in the name: a record an older layout wrote is not read back
        return self.records / f"{key}.v{RECORD_FORMAT}.json"

    def build_record(self, key: str, kind: str, make: Callable[[], dict | list]) -> dict | list:
        """A JSON record (a calibration, an analysis) for ``key``, made exactly once."""
        path = self.record_path(key)
        hit = _read_json(path)
        if hit is None:
            with self.lock(key):
                hit = _read_json(path)
                if hit is None:
                    t0 = time.perf_counter()
                    value = make()
                    atomic_write_text(path, json.dumps({"kind": kind, "value": value}))
                    self._built(key, kind, time.perf_counter() - t0)
                    return value
        return hit["value"]

    def _built(self, key: str, kind: str, seconds: float, method: str | None = None) -> None:
        append_line(self.builds, json.dumps({"key": key, "kind": kind, "method": method,
                                             "seconds": round(seconds, 3), "pid": os.getpid()}))

    def build_log(self) -> list[dict]:
        """Every completed build so far (a torn last line, from a killed writer, is skipped)."""
        if not self.builds.is_file():
            return []
        out = []
        for line in self.builds.read_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                out.append(json.loads(line))
        return out


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
