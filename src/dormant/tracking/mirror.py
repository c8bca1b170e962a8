"""A model store mirrored into the MLflow Model Registry; the store and its ledger stay the
authority.

``dormant store mirror STORE NAME`` records the mirror in the ledger (a ``registry-mirror``
row: the tracking and registry URIs, the registered model's name and the alias), so the
mirror cannot be dropped or redirected unseen, and syncs it:

- each version of NAME the ledger names becomes a version of the registered model, its
  checkpoint (re-hashed against the ledger first) and sidecar logged as the artifacts of a
  run in the experiment ``dormant-store-mirror``;
- each registry version carries tags computed from the ledger (``TAGS``): the store version,
  the checkpoint's sha256, the ledger row that wrote it and that row's hash, its requests and
  their verdicts, whether it is promoted, its sign-off;
- the alias (default ``champion``) sits on the version the ledger says is current, the
  latest promoted one, and moves only there.

``check`` lists every way the registry disagrees with the ledger, one line each:
``dormant ledger verify`` prints them and fails, as for any other tampering. ``sync`` puts
the registry back in line, and says what it corrected.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dormant.errors import DormantError
from dormant.tracking.client import (
    check_file_store,
    mlflow_errors,
    open_client,
    quick,
    resolve_uri,
)

KIND = "registry-mirror"
"""The ledger row that records (or, with ``active: false``, stops) a model's mirror."""
EXPERIMENT = "dormant-store-mirror"
DEFAULT_ALIAS = "champion"
TAGS = ("dormant.model", "dormant.version", "dormant.sha256", "dormant.ledger_row",
        "dormant.ledger_hash", "dormant.requests", "dormant.verdict", "dormant.promoted",
        "dormant.lineage", "dormant.from_version", "dormant.sign_off")
"""The tags each registry version carries, every one derived from the ledger and checked."""
_ALIAS = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,254}")
WHAT = "dormant store mirror"


@dataclass(frozen=True)
class MirrorConfig:
    tracking_uri: str
    registry_uri: str
    registered_model: str
    alias: str = DEFAULT_ALIAS
    seq: int | None = field(default=None, compare=False)
    """The ledger row that recorded it."""

    def payload(self) -> dict:
        return {"tracking_uri": self.tracking_uri, "registry_uri": self.registry_uri,
                "registered_model": self.registered_model, "alias": self.alias,
                "active": True}


def mirrors(ledger) -> dict[str, MirrorConfig]:
    """Each model's mirror, as the latest ``registry-mirror`` row of it records it (a
    stopped one is left out)."""
    out: dict[str, MirrorConfig] = {}
    for e in ledger.entries(kind=KIND):
        p = e.payload
        if not p.get("active", True):
            out.pop(e.model, None)
            continue
        out[e.model] = MirrorConfig(p["tracking_uri"], p["registry_uri"],
                                    p["registered_model"], p.get("alias", DEFAULT_ALIAS), e.seq)
    return out


def _check_names(registered_model: str, alias: str) -> None:
    if not registered_model.strip():
        raise DormantError("--registered-model is empty; give the registered model's name")
    if not _ALIAS.fullmatch(alias) or alias.lower() == "latest" or re.fullmatch(
            r"[vV]\d+", alias):
        raise DormantError(f"--alias {alias!r} is not an MLflow alias; use letters, digits, "
                           "'_' and '-' (not 'latest', not v<number>), e.g. champion")


def configure(st, name: str, *, tracking_uri: str | None = None,
              registry_uri: str | None = None, registered_model: str | None = None,
              alias: str | None = None):
    """The mirror of ``name`` with the options given over those recorded, and the ledger row
    that records it when it is new or changed (else None). The registry is reached before
    anything is recorded."""
    st.resolve(name)  # an unknown model fails here, naming those the store has
    old = mirrors(st.ledger).get(name)
    uri = resolve_uri(tracking_uri or (old.tracking_uri if old else None))
    registry = registry_uri or (old.registry_uri if old and not tracking_uri else None) or uri
    registry = resolve_uri(registry)
    config = MirrorConfig(uri, registry,
                          registered_model or (old.registered_model if old else name),
                          alias or (old.alias if old else DEFAULT_ALIAS))
    _check_names(config.registered_model, config.alias)
    if old == config:
        return old, None
    for u, flag in ((uri, "--tracking-uri"), (registry, "--registry-uri")):
        check_file_store(u, flag)
    client = open_client(uri, registry, WHAT)
    with quick(registry):
        client.search_registered_models(max_results=1)
    with st.lock():
        st.ledger.require_intact()
        row = st.ledger.append(KIND, config.payload(), model=name)
    return _with_seq(config, row.seq), row


def _with_seq(config: MirrorConfig, seq: int) -> MirrorConfig:
    return MirrorConfig(config.tracking_uri, config.registry_uri, config.registered_model,
                        config.alias, seq)


def stop_mirror(st, name: str):
    """Record that ``name`` is no longer mirrored; the registry is left as it is."""
    old = mirrors(st.ledger).get(name)
    if old is None:
        raise DormantError(f"{name} is not mirrored; nothing to stop (see dormant store "
                           "mirror --help)")
    with st.lock():
        st.ledger.require_intact()
        return st.ledger.append(KIND, {**old.payload(), "active": False}, model=name)


# --- what the ledger says the registry must hold ---------------------------------------------


def expected(st, name: str) -> tuple[list, dict[int, dict[str, str]], Any]:
    """``name``'s versions, the tags each must carry, and the current version."""
    entries = st.ledger.entries(model=name)
    hashes = {e.seq: e.hash for e in entries}
    made: dict[int, list] = {}
    signed: dict[int, Any] = {}
    for e in entries:
        if e.kind == "request-finished" and e.payload.get("to_version") is not None:
            made.setdefault(e.payload["to_version"], []).append(e)
        elif e.kind in ("version-approved", "version-rejected"):
            signed[e.payload.get("version")] = e
    versions = st.versions(name)
    tags: dict[int, dict[str, str]] = {}
    for v in versions:
        batch = made.get(v.version, []) if v.request_id is not None else []
        s = signed.get(v.version)
        tags[v.version] = {
            "dormant.model": name, "dormant.version": str(v.version),
            "dormant.sha256": v.sha256, "dormant.ledger_row": str(v.seq),
            "dormant.ledger_hash": hashes[v.seq],
            "dormant.requests": ",".join(e.request_id for e in batch) or "-",
            "dormant.verdict": ",".join(str(e.payload.get("verdict")) for e in batch)
            or "added",
            "dormant.promoted": "true" if v.promoted else "false",
            "dormant.lineage": str(v.lineage),
            "dormant.from_version": "-" if v.from_version is None else str(v.from_version),
            "dormant.sign_off": "-" if s is None else (
                f"{s.kind.removeprefix('version-')} by {s.payload.get('by')} at ledger row "
                f"{s.seq} ({s.hash})"),
        }
    return versions, tags, st.resolve(name)


def _registry(client, config: MirrorConfig) -> tuple[bool, dict[int, list], list]:
    """Whether the registered model exists, its versions by the store version they carry,
    and those that carry none."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(config.registered_model)
    except MlflowException as e:
        if getattr(e, "error_code", "") == "RESOURCE_DOES_NOT_EXIST":
            return False, {}, []
        raise
    by_version: dict[int, list] = {}
    stray = []
    name = config.registered_model.replace("'", "\\'")
    found, token = [], None
    while True:
        page = client.search_model_versions(f"name = '{name}'", max_results=1000,
                                            page_token=token)
        found += list(page)
        token = getattr(page, "token", None)
        if not token:
            break
    for mv in sorted(found, key=lambda m: int(m.version)):
        tag = (mv.tags or {}).get("dormant.version", "")
        if tag.isdigit():
            by_version.setdefault(int(tag), []).append(mv)
        else:
            stray.append(mv)
    return True, by_version, stray


def _alias_version(client, config: MirrorConfig):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(config.registered_model, config.alias)
    except MlflowException:
        return None


# --- check -------------------------------------------------------------------------------------


def check(st, name: str, config: MirrorConfig) -> list[str]:
    """Every disagreement between the registry and the ledger, one line each."""
    versions, want, current = expected(st, name)
    rm = config.registered_model
    client = open_client(config.tracking_uri, config.registry_uri, WHAT)
    with mlflow_errors(config.registry_uri):
        exists, have, stray = _registry(client, config)
        if not exists:
            return [f"registered model {rm!r} is missing from the registry "
                    f"{config.registry_uri} (the ledger mirrors {name} there since row "
                    f"{config.seq})"]
        problems = []
        for v in versions:
            mvs = have.get(v.version, [])
            if not mvs:
                problems.append(f"{name} v{v.version} is missing from the registry ({rm!r} "
                                "has no version tagged with it)")
                continue
            if len(mvs) > 1:
                problems.append(f"{name} v{v.version} is registered {len(mvs)} times in "
                                f"{rm!r} (versions {', '.join(m.version for m in mvs)})")
            for mv in mvs:
                tags = mv.tags or {}
                for k, value in want[v.version].items():
                    if tags.get(k) != value:
                        got = "missing" if k not in tags else repr(tags[k])
                        problems.append(f"{rm!r} version {mv.version} ({name} v{v.version}): "
                                        f"tag {k} is {got}, the ledger says {value!r}")
        known = {v.version for v in versions}
        for number, mvs in have.items():
            if number not in known:
                problems += [f"{rm!r} version {m.version} claims to be {name} v{number}, "
                             "which the ledger does not name" for m in mvs]
        problems += [f"{rm!r} version {m.version} is not a version of {name} in the ledger "
                     "(no dormant.version tag)" for m in stray]
        on = _alias_version(client, config)
        right = have.get(current.version, [])
        where = (f"the ledger's current version is {name} v{current.version}"
                 + (f" ({rm!r} version {right[0].version})" if right else ""))
        if on is None:
            problems.append(f"alias {config.alias!r} of {rm!r} is not set; {where}")
        elif not right or on.version != right[0].version:
            claimed = (on.tags or {}).get("dormant.version", "?")
            problems.append(f"alias {config.alias!r} is on {rm!r} version {on.version} "
                            f"({name} v{claimed}); {where}")
        if right:
            problems += _served_bytes(client, rm, right[0], current)
    return problems


def _served_bytes(client, rm: str, mv, v) -> list[str]:
    """The checkpoint the registry serves for the current version, re-hashed against the
    ledger: a deployment reads these bytes, not the store's."""
    from dormant.store.files import sha256_file

    name = Path(v.rel).name
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = Path(client.download_artifacts(mv.run_id, f"checkpoint/{name}", tmp))
        except Exception as e:  # noqa: BLE001 - any way the artifact is gone is one line
            return [f"{rm!r} version {mv.version} ({v.name} v{v.version}, current): its "
                    f"checkpoint cannot be read from the registry ({type(e).__name__})"]
        have = sha256_file(path)
    if have != v.sha256:
        return [f"{rm!r} version {mv.version} ({v.name} v{v.version}, current): its "
                f"checkpoint has sha256 {have[:12]}, the ledger recorded {v.sha256[:12]} at "
                f"row {v.seq}; the registry's copy was replaced"]
    return []


def check_all(st) -> list[str]:
    """The disagreements of every mirror the ledger records."""
    problems = []
    for name, config in mirrors(st.ledger).items():
        problems += [f"mirror of {name}: {p}" for p in check(st, name, config)]
    return problems


# --- sync --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Synced:
    name: str
    config: MirrorConfig
    registered: list[int]
    corrected: list[str]
    alias_on: int
    alias_moved: bool

    def line(self) -> str:
        rm, c = self.config.registered_model, self.config
        made = (f"registered {', '.join(f'v{v}' for v in self.registered)}"
                if self.registered else "no new version")
        fixed = (f"; corrected {len(self.corrected)} disagreement(s): "
                 + "; ".join(self.corrected[:3]) + ("; ..." if len(self.corrected) > 3 else "")
                 if self.corrected else "")
        moved = "moved to" if self.alias_moved else "on"
        return (f"mirror of {self.name} -> {rm!r} at {c.registry_uri}: {made}; alias "
                f"{c.alias!r} {moved} v{self.alias_on}{fixed}")


def _experiment(client) -> str:
    exp = client.get_experiment_by_name(EXPERIMENT)
    return exp.experiment_id if exp is not None else client.create_experiment(EXPERIMENT)


def _register(client, st, v, config: MirrorConfig, tags: dict[str, str]):
    """``v``'s checkpoint (re-hashed against the ledger first) and sidecar as a run's
    artifacts, and that run registered as a version of the registered model."""
    from dormant.store.checkpoint import sidecar_path

    path = st.verify_file(v)  # never upload bytes the ledger does not vouch for
    run = client.create_run(_experiment(client), run_name=f"{v.name} v{v.version}", tags={
        "dormant.store": str(Path(st.root).resolve()), "dormant.model": v.name,
        "dormant.version": str(v.version), "dormant.sha256": v.sha256})
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "checkpoint"
        folder.mkdir()
        (folder / path.name).write_bytes(path.read_bytes())
        side = sidecar_path(path)
        if side.is_file():
            (folder / side.name).write_bytes(side.read_bytes())
        client.log_artifacts(run.info.run_id, str(folder), "checkpoint")
    client.set_terminated(run.info.run_id, "FINISHED")
    return client.create_model_version(
        config.registered_model, f"{run.info.artifact_uri}/checkpoint", run.info.run_id,
        tags=tags, description=f"{v.name} v{v.version} of the dormant store "
                               f"{Path(st.root).resolve()}; its ledger is the authority "
                               "(dormant ledger verify checks this mirror)")


def sync(st, name: str, config: MirrorConfig) -> Synced:
    """Bring the registry in line with the ledger: register missing versions, correct tags
    that differ, and put the alias on the current version."""
    versions, want, current = expected(st, name)
    rm = config.registered_model
    client = open_client(config.tracking_uri, config.registry_uri, WHAT)
    registered, corrected = [], []
    with mlflow_errors(config.registry_uri):
        exists, have, _ = _registry(client, config)
        if not exists:
            client.create_registered_model(rm, tags={
                "dormant.store": str(Path(st.root).resolve()), "dormant.model": name},
                description=f"A mirror of {name} in the dormant store "
                            f"{Path(st.root).resolve()}; the store's ledger is the authority.")
        for v in versions:
            mvs = have.get(v.version)
            if not mvs:
                have[v.version] = [_register(client, st, v, config, want[v.version])]
                registered.append(v.version)
                continue
            for mv in mvs:
                for k, value in want[v.version].items():
                    if (mv.tags or {}).get(k) != value:
                        client.set_model_version_tag(rm, mv.version, k, value)
                        corrected.append(f"{rm!r} version {mv.version} tag {k}")
        target = have[current.version][0]
        on = _alias_version(client, config)
        moved = on is None or on.version != target.version
        if moved:
            client.set_registered_model_alias(rm, config.alias, target.version)
    return Synced(name, config, registered, corrected, current.version, moved)
