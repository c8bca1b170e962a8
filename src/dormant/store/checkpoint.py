"""Checkpoints: safetensors weights plus a JSON sidecar. User files are never unpickled."""

from __future__ import annotations

import functools
import json
import platform
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

from dormant.errors import DormantError, need_file
from dormant.store.files import atomic_write_bytes, atomic_write_text

if TYPE_CHECKING:
    import torch
    from torch import nn

    from dormant.models import ModelSpec

FORMAT = "dormant-checkpoint/1"


def sidecar_path(path: Path) -> Path:
    return path.with_suffix(".json")


@functools.cache
def git_revision() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
            text=True, timeout=5, check=True,
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def versions() -> dict:
    import torch
    import torchvision

    from dormant import __version__

    return {
        "dormant": __version__, "torch": torch.__version__,
        "torchvision": torchvision.__version__, "python": platform.python_version(),
    }


def save_checkpoint(
    path: Path, model: nn.Module, spec: ModelSpec, meta: dict | None = None
) -> Path:
    """Write ``path`` (.safetensors) and its sidecar; both atomically. A SISA ensemble of
    ``spec``'s architecture is recorded as the ensemble (``models.ensemble.spec_of``)."""
    import safetensors.torch

    from dormant.models.ensemble import spec_of

    path = Path(path)
    spec = spec_of(model, spec)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write_bytes(path, safetensors.torch.save(state))
    sidecar = {"format": FORMAT, "model": spec.to_dict(), **(meta or {}),
               "versions": versions(), "git_revision": git_revision()}
    atomic_write_text(sidecar_path(path), json.dumps(sidecar, indent=2, sort_keys=True))
    return path


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    import safetensors.torch
    import torch

    with open(path, "rb") as f:
        head = f.read(9)
    # safetensors: an 8-byte little-endian header length, then the JSON header itself
    header_len = int.from_bytes(head[:8], "little") if len(head) == 9 else 0
    if head[8:9] == b"{" and 0 < header_len < path.stat().st_size:
        try:
            return safetensors.torch.load_file(path)
        except Exception:  # noqa: BLE001 - safetensors raises several types for bad headers
            raise DormantError(
                f"{path} is a damaged safetensors checkpoint; write it again"
            ) from None
    if head[:1] == b"\x80" or path.suffix in (".pkl", ".pickle"):
        raise DormantError(
            f"{path} is a pickle file; dormant never unpickles user files. Save the weights "
            "with safetensors.torch.save_file(model.state_dict(), 'model.safetensors')"
        )
    if head[:4] == b"PK\x03\x04":
        # a legacy torch.save zip: weights_only refuses any code object, so nothing runs
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any failure here is a refused file
            msg = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
            raise DormantError(
                f"{path}: refused to load this torch file with weights_only=True ({msg}); "
                "convert it to safetensors"
            ) from None
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        tensors = isinstance(state, dict) and all(
            isinstance(v, torch.Tensor) for v in state.values()
        )
        if not tensors:
            raise DormantError(f"{path}: expected a state dict of tensors; convert to safetensors")
        return state
    raise DormantError(f"{path} is not a safetensors checkpoint; give a .safetensors file")


def read_sidecar(path: Path) -> dict:
    """The JSON sidecar beside a checkpoint; an empty dict when there is none."""
    side = sidecar_path(Path(path))
    if not side.is_file() or side == Path(path):
        return {}
    try:
        meta = json.loads(side.read_text())
    except json.JSONDecodeError:
        raise DormantError(f"sidecar {side} is not valid JSON; fix or delete it") from None
    if not isinstance(meta, dict):
        raise DormantError(f"sidecar {side} must hold a JSON object; fix or delete it")
    return meta


def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """State dict and sidecar (empty dict when there is none)."""
    path = Path(path)
    need_file(path, "checkpoint", suffix=".safetensors")
    state = _read_state(path)
    check_finite(state, path)
    return state, read_sidecar(path)


def check_finite(state: dict[str, torch.Tensor], path: Path) -> None:
    """Refuse weights holding NaN or inf: such a model (a run that diverged) predicts nothing,
    and every number measured on it would be meaningless."""
    import torch

    bad = {k: int((~torch.isfinite(t)).sum()) for k, t in state.items()
           if isinstance(t, torch.Tensor) and t.is_floating_point()}
    bad = {k: n for k, n in bad.items() if n}
    if bad:
        name, n = next(iter(bad.items()))
        more = f" (and {len(bad) - 1} more tensors)" if len(bad) > 1 else ""
        raise DormantError(
            f"checkpoint {path} holds non-finite weights: {n} NaN/inf values in {name!r}{more}; "
            "it comes from a run that diverged: give a checkpoint with finite weights")


def load_model(
    path: Path, expect: ModelSpec | None = None, device: torch.device | str = "cpu"
) -> tuple[nn.Module, dict]:
    """Rebuild the model a checkpoint holds. ``expect`` is what the caller needs (from the
    dataset and ``--model``); a checkpoint of another architecture or class count is refused."""
    from dormant.models import ModelSpec, create_model
    from dormant.models.ensemble import member_name

    state, meta = read_checkpoint(path)
    spec = ModelSpec(**meta["model"]) if "model" in meta else expect
    if spec is None:
        raise DormantError(f"{path} has no sidecar naming its model; pass --model")
    if expect is not None:
        # a SISA ensemble of the expected architecture is that model too (a study's cache
        # holds ``sisa`` rows under the member's spec); the other way round it is not
        mismatched = [(n, getattr(spec, n), getattr(expect, n))
                      for n in ("num_classes", "in_channels") if getattr(spec, n) !=
                      getattr(expect, n)]
        if expect.name not in (spec.name, member_name(spec.name)):
            mismatched.insert(0, ("name", spec.name, expect.name))
        if mismatched:
            name, have, want = mismatched[0]
            raise DormantError(
                f"checkpoint {path} has {name}={have!r} but this run needs {name}={want!r}; "
                "pass the matching --model/--dataset or another checkpoint")
    model = create_model(spec)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[0] if str(e) else "state dict mismatch"
        detail = next((ln.strip() for ln in str(e).splitlines()[1:] if ln.strip()), "")
        raise DormantError(
            f"checkpoint {path} does not fit model {spec.name!r} with {spec.num_classes} "
            f"classes ({first} {detail[:120]}); pass the matching --model"
        ) from None
    return model.to(device), meta
