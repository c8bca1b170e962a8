"""Checkpoints, the content-addressed cache and results files."""

from __future__ import annotations

import json
import pickle

import pytest
import safetensors.torch
import torch

from dormant.errors import DormantError
from dormant.models import ModelSpec, create_model
from dormant.store import (
    ModelCache,
    append_row,
    cache_key,
    load_model,
    read_rows,
    save_checkpoint,
)

SPEC = ModelSpec("cnn-small", 1, 10, 8)


def test_checkpoint_round_trip_with_sidecar(tmp_path):
    model = create_model(SPEC, seed=0)
    path = save_checkpoint(tmp_path / "m.safetensors", model, SPEC, {"data_fingerprint": "abc"})
    side = json.loads((tmp_path / "m.json").read_text())
    assert side["model"] == SPEC.to_dict() and side["data_fingerprint"] == "abc"
    assert {"torch", "torchvision", "dormant", "python"} <= set(side["versions"])
    assert "git_revision" in side
    loaded, meta = load_model(path, SPEC)
    for (k, a), b in zip(model.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    assert not list(tmp_path.glob("*.tmp"))  # atomic writes leave no temp files


def test_other_architecture_or_class_count_is_refused(tmp_path):
    path = save_checkpoint(tmp_path / "m.safetensors", create_model(SPEC), SPEC)
    with pytest.raises(DormantError, match="name='cnn-small' but this run needs name='mlp'"):
        load_model(path, ModelSpec("mlp", 1, 10, 8))
    with pytest.raises(DormantError, match="num_classes=10 but this run needs num_classes=3"):
        load_model(path, ModelSpec("cnn-small", 1, 3, 8))
    bare = tmp_path / "bare.safetensors"  # no sidecar: the state dict itself must fit
    safetensors.torch.save_file(create_model(ModelSpec("mlp", 1, 3, 8)).state_dict(), bare)
    with pytest.raises(DormantError, match="does not fit model 'mlp' with 10 classes"):
        load_model(bare, ModelSpec("mlp", 1, 10, 8))


class _Boom:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickles_are_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "PWNED"
    raw = tmp_path / "evil.safetensors"
    raw.write_bytes(pickle.dumps({"w": _Boom(marker)}))
    with pytest.raises(DormantError, match="pickle file; dormant never unpickles"):
        load_model(raw, SPEC)
    zipped = tmp_path / "evil.pt"
    torch.save({"w": _Boom(marker)}, zipped)
    with pytest.raises(DormantError, match="refused to load this torch file"):
        load_model(zipped, SPEC)
    assert not marker.exists()


def test_legacy_weights_only_state_dict_loads(tmp_path):
    model = create_model(SPEC, seed=1)
    torch.save(model.state_dict(), tmp_path / "old.pt")
    loaded, meta = load_model(tmp_path / "old.pt", SPEC)
    assert meta == {}
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                 loaded.state_dict().values(), strict=True))


def test_cache_returns_the_identical_model_without_retraining(tmp_path):
    cache = ModelCache(tmp_path)
    key = cache_key(kind="original", seed=0, recipe={"steps": 3})
    assert cache.load(key, SPEC) is None
    model = create_model(SPEC, seed=5)
    extras = {"learning_speed": torch.rand(7)}
    cache.save(key, model, SPEC, {"kind": "test"}, extras)
    hit = cache.load(key, SPEC)
    assert hit is not None
    loaded, meta, got = hit
    assert meta["cache_key"] == key
    assert torch.equal(got["learning_speed"], extras["learning_speed"])
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                 loaded.state_dict().values(), strict=True))
    assert cache_key(kind="original", seed=1, recipe={"steps": 3}) != key
    cache.path(key).write_bytes(b"garbage")  # a damaged entry is a miss, not a crash
    assert cache.load(key, SPEC) is None


def test_study_reuses_cached_original_and_oracle(digits, tmp_path, monkeypatch):
    from dormant.experiments import prepare as study
    from dormant.experiments.spec import RelearnSpec

    spec = RelearnSpec(device="cpu", train_steps=30)
    cache = ModelCache(tmp_path)
    first = study.prepare(spec, digits, 0, cache, None)
    calls = []
    monkeypatch.setattr(study, "fit", lambda *a, **k: calls.append(1))
    monkeypatch.setattr(study, "unlearn", lambda *a, **k: calls.append(1))
    second = study.prepare(spec, digits, 0, cache, None)
    assert calls == []
    for a, b in ((first.original, second.original), (first.oracle, second.oracle)):
        assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(),
                                                     b.state_dict().values(), strict=True))
    assert torch.equal(first.split.forget, second.split.forget)
    sides = [json.loads(p.read_text()) for p in (tmp_path / "models").glob("*.json")]
    oracle = next(s for s in sides if s["kind"] == "retrain")
    assert oracle["split"] == first.split.hash
    assert oracle["data_fingerprint"] == digits.fingerprint
    assert {"versions", "git_revision", "recipe", "seed"} <= set(oracle)


def test_results_rows_append_atomically(tmp_path):
    path = tmp_path / "results.jsonl"
    for i in range(3):
        append_row(path, {"cell": str(i), "acc": 50.0 + i, "nan": float("nan")})
    rows = read_rows(path)
    assert [r["acc"] for r in rows] == [50.0, 51.0, 52.0]
    assert rows[0]["nan"] is None  # strict JSON: NaN becomes null
    assert len(path.read_text().splitlines()) == 3
    assert not list(tmp_path.glob(".*tmp"))


def test_safetensors_header_length_starting_with_pickle_opcode_loads(tmp_path):
    """A safetensors header length whose low byte is 0x80 (pickle's PROTO opcode) is fine."""
    state = create_model(SPEC, seed=0).state_dict()
    path = tmp_path / "m.safetensors"
    for pad in range(300):
        blob = safetensors.torch.save(state, metadata={"pad": "x" * pad})
        if blob[0] == 0x80:
            break
    assert blob[0] == 0x80
    path.write_bytes(blob)
    loaded, _ = load_model(path, SPEC)
    assert all(torch.equal(a, b) for a, b in zip(state.values(), loaded.state_dict().values(),
                                                 strict=True))


def test_broken_sidecar_is_one_line(tmp_path):
    path = save_checkpoint(tmp_path / "m.safetensors", create_model(SPEC), SPEC)
    (tmp_path / "m.json").write_text("{not json")
    with pytest.raises(DormantError, match="sidecar .* is not valid JSON; fix or delete it"):
        load_model(path, SPEC)
    (tmp_path / "m.json").write_text("[1, 2]")
    with pytest.raises(DormantError, match="must hold a JSON object"):
        load_model(path, SPEC)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_weights_are_refused_in_one_line(tmp_path, value):
    """Every command that reads a checkpoint (store add, forget, audit, unlearn) goes through
    read_checkpoint; a diverged model's weights are refused there, and a cached one is a miss."""
    model = create_model(SPEC, seed=0)
    path = save_checkpoint(tmp_path / "m.safetensors", model, SPEC)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["0.0.weight"][0, 0, 0, 0] = value
    safetensors.torch.save_file(state, path)
    with pytest.raises(DormantError) as e:
        load_model(path, SPEC)
    msg = str(e.value)
    assert "non-finite weights: 1 NaN/inf values in '0.0.weight'" in msg and "\n" not in msg
    cache = ModelCache(tmp_path / "cache")
    key = cache_key(x=1)
    cache.save(key, model, SPEC, {})
    safetensors.torch.save_file(state, cache.path(key))
    assert cache.load(key, SPEC) is None
