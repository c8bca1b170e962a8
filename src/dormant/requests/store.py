"""The model store: one safetensors checkpoint and JSON sidecar per version, a lock that
serialises every writer, and the ledger, which alone says which versions exist and which is
promoted. A file on disk that no ledger row names is not a version."""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Container, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from dormant.errors import DormantError
from dormant.models import ModelSpec, available_models, create_model
from dormant.requests.ledger import Entry, Ledger
from dormant.requests.manifest import manifest_text, parse_manifest
from dormant.requests.version import Version, own_files
from dormant.store.checkpoint import read_checkpoint, save_checkpoint, sidecar_path
from dormant.store.files import atomic_write_bytes, atomic_write_text, sha256_file

FORMAT = "dormant-store/1"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def parse_ref(text: str) -> tuple[str, int | None]:
    """``NAME`` or ``NAME@VERSION`` (``@v3`` and ``@3`` both work)."""
    name, _, ver = text.partition("@")
    check_name(name)
    if not ver:
        return name, None
    if not re.fullmatch(r"v?\d+", ver):
        raise DormantError(f"--model {text!r}: the version after @ must be a number, e.g. "
                           f"{name}@2")
    return name, int(ver.lstrip("v"))


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise DormantError(f"model name {name!r} is not allowed; use letters, digits, '.', '_' "
                           "and '-' (at most 64, starting with a letter or digit)")
    return name


_SIZES = (8, 16, 28, 32, 64, 96, 224)
"""Image sizes tried when a plain state dict's architecture does not pin its input size."""


def fit_spec(state: dict[str, torch.Tensor], side: dict, arch: str, path: Path) -> ModelSpec:
    """The ``ModelSpec`` under which ``state`` loads into ``arch`` exactly (strict: every key,
    every shape), proving the weights fit the architecture and its class count before a store
    records them. A sidecar's spec is taken as it is; for a plain state dict the class count
    is read off the output layer and the input channels and size are searched."""
    if arch not in available_models() and arch.split(":", 1)[0] + ":<name>" not in \
            available_models():
        raise DormantError(f"--arch {arch!r} is not an architecture dormant knows; choose one "
                           f"of: {', '.join(available_models())}")
    given = side.get("model")
    if isinstance(given, dict):
        try:
            spec = ModelSpec(**{**given, "name": arch})
        except TypeError:
            raise DormantError(f"the sidecar of {path} has a malformed model spec {given!r}; "
                               "fix it, or add the plain weights with --arch") from None
        candidates = [spec]
    else:
        probe = create_model(ModelSpec(arch, 1, 10, 32))
        keys = list(probe.state_dict())
        out_w = next((k for k in reversed(keys) if k.endswith("weight")), None)
        classes = state[out_w].shape[0] if out_w in state and state[out_w].dim() else 10
        candidates = [ModelSpec(arch, c, int(classes), size) for c in (1, 3) for size in _SIZES]
        first = state.get(keys[0]) if keys else None
        if first is not None and first.dim() == 2:  # an MLP: inputs = channels * size^2
            for c in (1, 3):
                side_len = round((first.shape[1] / c) ** 0.5)
                if c * side_len * side_len == first.shape[1]:
                    candidates.insert(0, ModelSpec(arch, c, int(classes), side_len))
        elif first is not None and first.dim() == 4:  # a conv stem fixes the channels
            candidates.sort(key=lambda s: s.in_channels != first.shape[1])
    problem = ""
    for spec in candidates:
        try:
            model = create_model(spec)
        except (TypeError, ValueError, RuntimeError) as e:
            if isinstance(e, DormantError):
                if not isinstance(given, dict):
                    continue  # a guessed size the model refuses (a timm ViT's patch grid)
                raise
            raise DormantError(f"cannot build --arch {arch!r} as {spec}: {one_line_of(e)}; fix "
                               f"the sidecar of {path} or pass the plain weights") from None
        try:
            model.load_state_dict(state, strict=True)
            return spec
        except RuntimeError as e:
            if not problem:
                lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
                problem = " ".join(lines[:2])[:200]
    raise DormantError(f"the weights in {path} do not fit --arch {arch!r} ({problem}); pass "
                       "the architecture they were trained with")


def store_root_of(path: Path) -> Path | None:
    """The model store ``path`` is in (or is), or None: the nearest folder at or above it
    holding a dormant ``store.json``."""
    here = Path(path).resolve()
    for folder in (here, *here.parents):
        marker = folder / "store.json"
        if marker.is_file():
            try:
                if json.loads(marker.read_text()).get("format") == FORMAT:
                    return folder
            except (OSError, ValueError, AttributeError):
                continue
    return None


def one_line_of(e: BaseException) -> str:
    """An exception's message as one short line (its type when it has none)."""
    text = " ".join(str(e).split())
    return (text[:300] + "...") if len(text) > 300 else text or type(e).__name__


class StoreBusy(DormantError):
    """The store's lock stayed taken (a request is running) for longer than a caller waits."""


def _wait_for(f, timeout: float | None, root: Path) -> None:
    if timeout is None:
        fcntl.flock(f, fcntl.LOCK_EX)
        return
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise StoreBusy(f"the store {root} is busy with a request (its lock stayed "
                                f"taken for {timeout:.0f} s); nothing was recorded: try again "
                                "once it finishes") from None
            time.sleep(0.05)


class ModelStore:
    """A folder holding ``store.json``, ``models/NAME/vN.safetensors`` (+ ``.json``) and, unless
    ``ledger`` names another file, ``ledger.sqlite``."""

    def __init__(self, root: Path, ledger: Path | None = None, *, create: bool = False) -> None:
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise DormantError(f"--store {root} is a file, not a model store folder")
        marker = self.root / "store.json"
        if marker.is_file():
            try:
                fmt = json.loads(marker.read_text()).get("format")
            except (json.JSONDecodeError, AttributeError):
                fmt = None
            if fmt != FORMAT:
                raise DormantError(f"{root} is not a dormant model store ({marker} is not "
                                   f"ours); give a folder made by dormant store add")
        elif not create:
            raise DormantError(f"{root} is not a dormant model store (no store.json); create one "
                               "with dormant store add or dormant train --store")
        elif self.root.exists() and any(self.root.iterdir()):
            raise DormantError(f"{root} is not empty and not a dormant model store; give a new "
                               "or empty folder")
        else:
            self.root.mkdir(parents=True, exist_ok=True)
            atomic_write_text(marker, json.dumps({"format": FORMAT}) + "\n")
        # an existing store whose ledger is gone is refused, never given a fresh, empty one:
        # that would forget every deletion (a store with no checkpoint yet may get its first)
        path = Path(ledger) if ledger else self.root / "ledger.sqlite"
        if not path.exists() and any(p.is_file()
                                     for p in (self.root / "models").rglob("*.safetensors")):
            raise DormantError(f"the store {root} holds checkpoints but its ledger {path} is "
                               "gone; restore it from a backup (a new, empty ledger would "
                               "forget every deletion)")
        self.ledger = Ledger(path, create=create)
        if ledger is not None and path.resolve() != (self.root / "ledger.sqlite").resolve():
            self._require_ledger_of_store()

    def _require_ledger_of_store(self) -> None:
        """Refuse a ``--ledger`` that is another store's: its checkpoints are not here, or
        this store's are not in it. Left unchecked, every command would go on to a wrong
        complaint (an unknown model, a missing checkpoint) or list another store's models."""
        named = {v.rel for name in self.models() for v in self.versions(name)}
        named_all = named | {self.rel(name, e.payload["to_version"]) for name in self.models()
                             for e in self.unfinished(name)}
        on_disk = {str(p.relative_to(self.root))
                   for p in (self.root / "models").glob("*/v*.safetensors")
                   if re.fullmatch(r"v\d+\.safetensors", p.name)}
        missing = sorted(r for r in named if not self.path(r).is_file())
        stray = sorted(on_disk - named_all)
        if missing or stray:
            what = (f"it does not name this store's {', '.join(stray[:3])}" if stray else
                    f"it names {missing[0]}, which this store does not hold")
            raise DormantError(
                f"--ledger {self.ledger.path} is not the ledger of the store {self.root}: "
                f"{what}; give the store's own ledger, or leave --ledger out to use "
                f"{self.root / 'ledger.sqlite'}")

    @contextmanager
    def lock(self, on_wait: Callable[[], None] | None = None,
             timeout: float | None = None) -> Iterator[None]:
        """An exclusive lock on the whole store for one writer; others wait their turn, for
        at most ``timeout`` seconds when given (then :class:`StoreBusy`)."""
        try:
            f = open(self.root / ".lock", "a+")  # noqa: SIM115 - closed below
        except OSError as e:
            raise DormantError(f"the store {self.root} cannot be written (its lock file: "
                               f"{e.strerror or e}); nothing was recorded: make it writable "
                               "and rerun") from None
        with f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if on_wait is not None:
                    on_wait()
                _wait_for(f, timeout, self.root)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def path(self, rel: str) -> Path:
        return self.root / rel

    @staticmethod
    def rel(name: str, version: int) -> str:
        return f"models/{name}/v{version}.safetensors"

    @staticmethod
    def assignment_rel(name: str, version: int) -> str:
        """A SISA version's assignment of training ids to shards and slices."""
        return f"models/{name}/v{version}.assignment.safetensors"

    @staticmethod
    def manifest_rel(name: str, version: int) -> str:
        """An added version's data manifest (``dormant.requests.manifest``)."""
        return f"models/{name}/v{version}.manifest.csv"

    def version_files(self, name: str, version: int) -> tuple[Path, ...]:
        """The files only this version has: its checkpoint, sidecar, (SISA) assignment and
        (added with one) data manifest."""
        ckpt = self.path(self.rel(name, version))
        return (ckpt, sidecar_path(ckpt), self.path(self.assignment_rel(name, version)),
                self.path(self.manifest_rel(name, version)))

    def manifest(self, v: Version) -> dict[int, str] | None:
        """The data manifest ``v`` descends from (the one the model at the root of its chain
        of requests was added with), checked against the hash its ledger row recorded; None
        when that model was added without one."""
        by_version = {x.version: x for x in self.versions(v.name)}
        root = v
        while root.request_id is not None and root.from_version in by_version:
            root = by_version[root.from_version]
        item = next((f for f in root.files if f.get("role") == "manifest"), None)
        if item is None:
            return None
        path = self.verified(root, item)
        return parse_manifest(path.read_text(encoding="utf-8"), str(path))

    # --- what the ledger says -------------------------------------------------------------

    def versions(self, name: str) -> list[Version]:
        """Every written version of ``name``, oldest first."""
        out: list[Version] = []
        lineage: dict[int, int] = {}
        for e in self.ledger.entries(model=name):
            p = e.payload
            if e.kind == "model-added":
                lineage[p["version"]] = p.get("lineage", 1)
                out.append(Version(name, p["version"], p["files"][0]["path"],
                                   p["files"][0]["sha256"], e.seq, True,
                                   files=own_files(p["files"]), sisa=p.get("sisa"),
                                   lineage=lineage[p["version"]]))
            # the requests of a batch share the version they made: the first row names it
            elif e.kind == "request-finished" and p.get("to_version") is not None \
                    and p["to_version"] not in lineage:
                lineage[p["to_version"]] = lineage.get(p["from_version"], 1)
                new = next(f for f in p["files"] if f["role"] == "unlearned")
                out.append(Version(name, p["to_version"], new["path"], new["sha256"], e.seq,
                                   bool(p["promoted"]), e.request_id, p["from_version"],
                                   own_files(p["files"]), p.get("sisa"),
                                   lineage[p["to_version"]]))
            elif e.kind == "version-approved":  # a reviewer's sign-off promotes it
                out = [dataclasses.replace(v, promoted=True)
                       if v.version == p["version"] else v for v in out]
        return out

    def sign_off(self, name: str, request_id: str, *, approve: bool, by: str,
                 comment: str, on_wait: Callable[[], None] | None = None,
                 timeout: float | None = None) -> Version:
        """A reviewer's decision on the version request ``request_id`` made and kept
        unpromoted because its verdict was ``warn``: ``approve`` promotes it, else it stays
        unpromoted for good; either way a ``version-approved`` / ``version-rejected`` row
        records who, why and the requests of its batch. Refused in one line: a request that
        made no such version, one already decided, or one no longer built on the current
        version (promoting it then could serve an id a later promoted request deleted).
        ``timeout``: the most seconds to wait for the store's lock (None: as long as it
        takes)."""
        with self.lock(on_wait, timeout):
            self.ledger.require_intact()
            self.require_own_ledger(name)
            rows = [e for e in self.ledger.entries(kind="request-finished", model=name)
                    if e.request_id == request_id]
            if not rows:
                raise DormantError(f"{name} has no finished request {request_id!r}; see "
                                   "dormant ledger show STORE")
            p = rows[-1].payload
            v = next(x for x in self.versions(name) if x.version == p["to_version"])
            decided = [e for e in self.ledger.entries(model=name)
                       if e.kind in ("version-approved", "version-rejected")
                       and e.payload.get("version") == v.version]
            if decided:
                d = decided[0]
                raise DormantError(f"{name} v{v.version} was already "
                                   f"{d.kind.removeprefix('version-')} by "
                                   f"{d.payload['by']!r} at ledger row {d.seq}")
            if v.promoted:
                raise DormantError(f"{name} v{v.version} is promoted already; a sign-off is "
                                   "for a version kept back by a warning")
            batch_rows = [e for e in self.ledger.entries(kind="request-finished", model=name)
                          if e.payload.get("to_version") == v.version]
            verdicts = {e.payload.get("verdict") for e in batch_rows}
            if "fail" in verdicts or "warn" not in verdicts:
                raise DormantError(f"{name} v{v.version}'s verdicts are "
                                   f"{', '.join(sorted(map(str, verdicts)))}; only a version "
                                   "kept back by a warning can be signed off (a failed one is "
                                   "never served)")
            current = self.resolve(name)
            later = [x for x in self.versions(name) if x.promoted and x.request_id is not None
                     and self._descends(x, v.version)]
            if later:
                raise DormantError(
                    f"{name} v{v.version} is superseded: v{later[-1].version}, built on it, "
                    "is promoted already; sign off is for a version still kept back")
            if approve and (v.from_version != current.version or v.lineage != current.lineage):
                raise DormantError(
                    f"{name} v{v.version} was built on v{v.from_version}, but v"
                    f"{current.version} is current now; approving it could serve what a "
                    "later request deleted: file the request again on the current version")
            if approve:
                self.verify_files(v)  # promote the bytes the ledger recorded, no other
            self.ledger.append("version-approved" if approve else "version-rejected", {
                "version": v.version, "requests": sorted(e.request_id for e in batch_rows),
                "by": by, "comment": comment, "verdict": "warn", "sha256": v.sha256},
                request_id=request_id, model=name)
        return self.resolve(name, v.version)

    def _descends(self, x: Version, version: int) -> bool:
        by_version = {y.version: y for y in self.versions(x.name)}
        cur: Version | None = x
        while cur is not None and cur.request_id is not None:
            if cur.from_version == version:
                return True
            cur = by_version.get(cur.from_version)
        return False

    def models(self) -> list[str]:
        return sorted({e.model for e in self.ledger.entries(kind="model-added")})

    def resolve(self, name: str, version: int | None = None) -> Version:
        """``version``, or the latest promoted version; unknown ones name what exists."""
        known = self.versions(name)
        if not known:
            self.require_own_ledger(name)  # checkpoints on disk, yet no row: a foreign ledger
            have = ", ".join(self.models()) or "none yet"
            raise DormantError(f"unknown model {name!r} in store {self.root}; it holds: {have}")
        if version is None:
            return [v for v in known if v.promoted][-1]
        match = [v for v in known if v.version == version]
        if not match:
            listed = ", ".join(f"v{v.version}" for v in known)
            raise DormantError(f"model {name!r} has no version {version}; it has {listed}")
        return match[0]

    def verify_file(self, v: Version) -> Path:
        """The checkpoint's path, once its bytes hash to what the ledger recorded."""
        path = self.path(v.rel)
        if not path.is_file():
            raise DormantError(f"checkpoint {path} of {v.name} v{v.version} is missing; the "
                               f"ledger recorded it at row {v.seq}")
        have = sha256_file(path)
        if have != v.sha256:
            raise DormantError(
                f"checkpoint {path} has sha256 {have[:12]} but the ledger recorded "
                f"{v.sha256[:12]} at row {v.seq}; it was replaced: restore it or add it as a "
                "new model")
        return path

    def verified(self, v: Version, item: dict) -> Path:
        """The path of ``item`` (one of ``v.files``), once its bytes hash to what the ledger
        recorded for it."""
        path = self.path(item["path"])
        if not path.is_file():
            raise DormantError(f"{path} of {v.name} v{v.version} is missing; the ledger "
                               f"recorded it at row {v.seq}: restore it")
        if sha256_file(path) != item["sha256"]:
            raise DormantError(f"{path} of {v.name} v{v.version} was changed since the ledger "
                               f"recorded it at row {v.seq}; restore it")
        return path

    def verify_files(self, v: Version) -> None:
        """Every file the ledger recorded for ``v`` (its checkpoint, and a SISA version's
        assignment and shard checkpoints) is there with the bytes it recorded."""
        self.verify_file(v)
        for item in v.files:
            self.verified(v, item)

    def deleted(self, v: Version) -> dict[int, str]:
        """Every id deleted on the way to ``v``, mapped to the request that deleted it."""
        by_version = {x.version: x for x in self.versions(v.name)}
        made: dict[int, list[Entry]] = {}
        for e in self.ledger.entries(kind="request-finished", model=v.name):
            made.setdefault(e.payload.get("to_version"), []).append(e)
        out: dict[int, str] = {}
        cur: Version | None = v
        while cur is not None and cur.request_id is not None:
            for e in made[cur.version]:  # every request of the batch that made it
                out.update(dict.fromkeys(e.payload["ids"], e.request_id))
            cur = by_version.get(cur.from_version)
        return out

    def unfinished(self, name: str) -> list[Entry]:
        """``request-started`` rows of ``name`` with no ``request-finished`` row."""
        done = {e.request_id for e in self.ledger.entries(kind="request-finished", model=name)}
        return [e for e in self.ledger.entries(kind="request-started", model=name)
                if e.request_id not in done]

    def promoted_deletions(self, name: str, lineages: Container[int] | None = None
                           ) -> dict[int, str]:
        """Every id a promoted request deleted from a version of ``name`` in ``lineages``
        (None: any), mapped to that request; for the current lineage, what the current
        version must not hold."""
        versions = {v.version: v for v in self.versions(name)}
        out: dict[int, str] = {}
        for e in self.ledger.entries(kind="request-finished", model=name):
            made = versions.get(e.payload.get("to_version"))
            if made is not None and made.promoted and (lineages is None
                                                       or made.lineage in lineages):
                out.update(dict.fromkeys(e.payload["ids"], e.request_id))
        return out

    def missing_deletions(self, v: Version) -> dict[int, str]:
        """The promoted deletions of ``v``'s lineage that ``v`` still holds (id -> request)."""
        done = self.deleted(v)
        return {i: rid for i, rid in self.promoted_deletions(v.name, (v.lineage,)).items()
                if i not in done}

    def rejected_ancestor(self, v: Version) -> Entry | None:
        """The ``version-rejected`` row of ``v`` or of a version it was built on, if any."""
        rows = {e.payload.get("version"): e for e in self.ledger.entries(
            kind="version-rejected", model=v.name)}
        by_version = {x.version: x for x in self.versions(v.name)}
        cur: Version | None = v
        while cur is not None:
            if cur.version in rows:
                return rows[cur.version]
            cur = by_version.get(cur.from_version) if cur.request_id is not None else None
        return None

    def require_base(self, v: Version) -> None:
        """Refuse, in one line, to build a version on ``v`` when the version it would make
        could not be served: ``v`` lacks a promoted deletion, is of an older lineage, or is
        (or descends from) a version a reviewer rejected."""
        current = self.resolve(v.name)
        if v.lineage != current.lineage:
            raise DormantError(
                f"{v.name} v{v.version} is of lineage {v.lineage}, but v{current.version} "
                f"(lineage {current.lineage}) is current; a request builds on the current "
                f"lineage only: drop @{v.version}")
        rejected = self.rejected_ancestor(v)
        if rejected is not None:
            raise DormantError(
                f"{v.name} v{v.version} is, or is built on, v{rejected.payload['version']}, "
                f"which {rejected.payload['by']!r} rejected at ledger row {rejected.seq}; "
                f"nothing built on it can be served: drop @{v.version} to build on "
                f"v{current.version}")
        missing = self.missing_deletions(v)
        if missing:
            by = sorted(set(missing.values()))
            raise DormantError(
                f"{v.name} v{v.version} still holds {len(missing)} id(s) that request "
                f"{', '.join(by)} deleted and v{current.version} (current) does not; a version "
                "built on it could never be promoted: drop "
                f"@{v.version} to build on v{current.version}")

    def require_own_ledger(self, name: str) -> None:
        """Refuse a ledger that does not name every checkpoint of ``name`` on disk: it is not
        this store's ledger (``--ledger`` pointing elsewhere would hide its deletions), or a
        file was put there by hand. Call after ``sweep``, which removes what killed requests
        left."""
        named = {v.rel for v in self.versions(name)}
        named |= {self.rel(name, e.payload["to_version"]) for e in self.unfinished(name)}
        folder = self.root / "models" / name
        found = [p for p in folder.glob("v*.safetensors")
                 if re.fullmatch(r"v\d+\.safetensors", p.name)] if folder.is_dir() else []
        stray = sorted(str(p.relative_to(self.root)) for p in found
                       if str(p.relative_to(self.root)) not in named)
        if stray:
            raise DormantError(
                f"the store {self.root} holds {len(stray)} checkpoint(s) of {name} that the "
                f"ledger {self.ledger.path} does not name ({', '.join(stray[:3])}): it is not "
                "this store's ledger, or the files were put there by hand; give the store's "
                "own ledger, or remove the files")

    def require_writable(self, name: str) -> None:
        """Refuse a store that cannot take a new version (read-only, or no space even for a
        probe file) before any row records a request that could not finish."""
        folder = self.root / "models" / name
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(dir=folder, prefix=".probe.", suffix=".tmp")
            os.close(fd)
            os.unlink(probe)
            with open(self.ledger.path, "r+b"):
                pass
        except OSError as e:
            raise DormantError(f"the store {self.root} cannot be written ({e.strerror or e}: "
                               f"{e.filename or folder}); nothing was recorded: make it "
                               "writable, or free space, and rerun") from None

    def next_version(self, name: str) -> int:
        """One past every version written, reserved by a started request, or on disk."""
        used = [v.version for v in self.versions(name)]
        used += [e.payload["to_version"] for e in self.unfinished(name)]
        folder = self.root / "models" / name
        if folder.is_dir():
            used += [int(m.group(1)) for p in folder.iterdir()
                     if (m := re.fullmatch(r"v(\d+)\.safetensors", p.name))]
        return max(used, default=0) + 1

    # --- writing (call these under ``lock``) -----------------------------------------------

    def sweep(self) -> list[Path]:
        """Remove what a killed writer can leave: temp files, the files of a started request's
        version that never finished (its rerun writes them again), SISA shard checkpoints no
        ledger row names (a killed request wrote them; shards are shared between versions, so
        only the ledger can tell), and the report folder of a request that never finished.
        All but the temp files are removed only under the store's own ledger: another
        ``--ledger`` file (an old backup, another store's) could take a finished version for a
        killed request's leftovers, or shards for orphans. Call it once the chain verifies:
        it trusts the ledger to say what is whose."""
        gone = list((self.root / "models").glob("*/.*.tmp"))
        gone += list((self.root / "models").glob("*/shards/.*.tmp"))
        if self.ledger.path.resolve() == (self.root / "ledger.sqlite").resolve():
            for name in self.models():
                for e in self.unfinished(name):
                    gone += [p for p in self.version_files(name, e.payload["to_version"])
                             if p.exists()]
                    # a report written before the process died: its rerun writes it again,
                    # and until then it must not stand as evidence of an outcome the ledger
                    # lacks
                    self.drop_report(e.request_id)
            named = {f["path"] for e in self.ledger.entries()
                     for f in e.payload.get("files", []) if isinstance(f, dict)}
            gone += [p for p in (self.root / "models").glob("*/shards/*.safetensors")
                     if str(p.relative_to(self.root)) not in named]
        for p in gone:
            p.unlink(missing_ok=True)
        return gone

    def drop_report(self, request_id: str) -> None:
        """Remove the report folder of a request that has no ``request-finished`` row."""
        folder = self.root / "requests" / request_id
        if folder.is_dir():
            shutil.rmtree(folder, ignore_errors=True)

    def write_version(self, name: str, version: int, model: nn.Module, spec: ModelSpec,
                      meta: dict) -> tuple[str, str]:
        """Save ``model`` as ``name`` v``version`` (temp file, then rename); ``(rel, sha256)``."""
        rel = self.rel(name, version)
        save_checkpoint(self.path(rel), model, spec, meta)
        return rel, sha256_file(self.path(rel))

    def add(self, name: str, checkpoint: Path, *, arch: str | None = None,
            meta: dict | None = None, new_lineage: str | None = None,
            parts: Callable | None = None, manifest: dict[int, str] | None = None) -> Version:
        """Copy a checkpoint into the store as ``name``'s next version, promoted. Its sidecar,
        if any, comes with it; a plain state dict needs ``arch`` (the model's name).

        A name whose current lineage has promoted deletions is refused: the checkpoint could
        hold what they deleted. ``new_lineage`` (why, in words) starts a new lineage of the
        name instead; the ledger row records it, and which deletions the old lineage made.
        ``parts(store, name, version, checkpoint, side) -> (files, extra)``, when given, writes
        the version's other files (a SISA version's shards) and says what the row records.
        ``manifest`` (``{id: contributor}``) is kept beside the checkpoint, hashed in the row,
        and read by every version of the lineage."""
        check_name(name)
        if new_lineage is not None and not new_lineage.strip():
            raise DormantError("--new-lineage is empty; say why this model replaces the "
                               "lineage, e.g. 'retrained without every deleted id'")
        state, side = read_checkpoint(Path(checkpoint))  # refuses pickles and damaged files
        if not all(isinstance(t, torch.Tensor) for t in state.values()):
            raise DormantError(f"{checkpoint} is not a state dict of tensors")
        arch = arch or side.get("model", {}).get("name")
        if arch is None:
            raise DormantError(f"{checkpoint} has no sidecar naming its architecture; pass "
                               "--arch (e.g. cnn-small)")
        spec = fit_spec(state, side, arch, Path(checkpoint))  # before anything is written
        with self.lock():
            self.ledger.require_intact()
            self.require_writable(name)
            self.sweep()
            self.require_own_ledger(name)
            lineage, replaced = self._lineage_of_add(name, new_lineage)
            version = self.next_version(name)
            rel = self.rel(name, version)
            dest = self.path(rel)
            tmp = dest.with_name(f".{dest.name}.copy.tmp")
            try:
                shutil.copyfile(checkpoint, tmp)
                os.replace(tmp, dest)
                side = {**side, "kind": side.get("kind", "added"), "arch": arch,
                        "source": str(checkpoint), **(meta or {})}
                atomic_write_bytes(sidecar_path(dest), json.dumps(side, indent=2).encode())
                sha = sha256_file(dest)
                files = [{"path": rel, "sha256": sha, "role": "checkpoint"}]
                extra: dict = {}
                if manifest is not None:
                    m_rel = self.manifest_rel(name, version)
                    atomic_write_text(self.path(m_rel), manifest_text(manifest))
                    files.append({"path": m_rel, "sha256": sha256_file(self.path(m_rel)),
                                  "role": "manifest"})
                    extra["manifest"] = {"ids": len(manifest),
                                         "contributors": len(set(manifest.values()))}
                if parts is not None:
                    more, made = parts(self, name, version, Path(checkpoint), side)
                    files += more
                    extra.update(made)
                lines = {"lineage": lineage} if new_lineage is None else {
                    "lineage": lineage, "lineage_reason": new_lineage, "replaces": replaced}
                e = self.ledger.append("model-added", {
                    "version": version, "arch": arch, "source": str(checkpoint),
                    "num_classes": spec.num_classes, "in_channels": spec.in_channels,
                    "files": files, "data_fingerprint": side.get("data_fingerprint"),
                    **lines, **extra,
                }, model=name)
            except BaseException:  # nothing half-added: no row names these files
                tmp.unlink(missing_ok=True)
                for p in self.version_files(name, version):
                    p.unlink(missing_ok=True)
                raise
        return Version(name, version, rel, sha, e.seq, True, files=tuple(files),
                       sisa=extra.get("sisa"), lineage=lineage)

    def check_addable(self, name: str) -> None:
        """Refuse, before a model is trained for it, an add the store would refuse."""
        self._lineage_of_add(name, None)

    def _lineage_of_add(self, name: str, new_lineage: str | None) -> tuple[int, dict]:
        """The lineage a model added to ``name`` joins, and (with ``new_lineage``) what the
        lineage it replaces had deleted; a re-add over promoted deletions is refused."""
        if not self.versions(name):
            return 1, {}
        current = self.resolve(name)
        if new_lineage is None:
            ever = self.promoted_deletions(name)
            if ever:
                by = sorted(set(ever.values()))
                raise DormantError(
                    f"{name} has {len(ever)} promoted deletion(s) (request "
                    f"{', '.join(by)}); adding a checkpoint under its name could serve what "
                    "they deleted: add it under a new name, or pass --new-lineage 'why' to "
                    "start a new lineage of it (recorded in the ledger)")
            return current.lineage, {}
        deleted = self.promoted_deletions(name, (current.lineage,))
        return current.lineage + 1, {"lineage": current.lineage, "version": current.version,
                                     "deleted_ids": len(deleted),
                                     "requests": sorted(set(deleted.values()))}
