"""``timm:<name>`` models: built for the dataset's channels and size, a digits study end to
end through the CLI, and one-line refusals of what cannot work."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch

from dormant.cli import main
from dormant.errors import DormantError
from dormant.models import ModelSpec, create_model, default_layers, hidden_layers

pytest.importorskip("timm")

STUDY_MODEL = "timm:test_efficientnet_gn"
"""The cheapest timm model that takes 8x8 digits and fits them well within 20 steps (87%);
its BatchNorm twin, timm:test_efficientnet, is what the shape test covers."""


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name,c,size", [("timm:test_resnet", 1, 8),
                                         ("timm:test_efficientnet", 1, 8),
                                         ("timm:test_vit", 3, 32)])
def test_built_for_the_datasets_channels_and_size(name: str, c: int, size: int) -> None:
    """The stem takes ``c`` channels natively (no repeat wrapper), a ViT's position grid is
    built for the image size, and the head has ``num_classes`` outputs."""
    model = create_model(ModelSpec(name, c, 7, size), seed=0)
    assert model.training
    stem = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert stem.in_channels == c
    with torch.no_grad():
        assert model.eval()(torch.rand(2, c, size, size)).shape == (2, 7)
    if name == "timm:test_vit":  # 32/16 = 2x2 patches + the class token, not 224's 14x14
        assert model.pos_embed.shape[1] == (size // 16) ** 2 + 1
    more = create_model(ModelSpec(name, c, 12, size), seed=0)
    width = model.get_classifier().in_features
    assert _params(more) - _params(model) == 5 * (width + 1)  # 5 more rows of weight + bias
    assert len(hidden_layers(model)) >= 4 and len(default_layers(model)) == 2


def test_seeded_init_is_reproducible() -> None:
    spec = ModelSpec("timm:test_resnet", 1, 10, 8)
    a, b, c = (create_model(spec, seed=s) for s in (1, 1, 2))
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(),
                                                  b.state_dict().values(), strict=True))
    assert not torch.equal(next(a.parameters()), next(c.parameters()))


def _study(out: Path, model: str) -> list[str]:
    return ["relearn", "--dataset", "digits", "--model", model, "--methods", "finetune",
            "--k", "0", "--seeds", "0", "--forget", "random:20", "--train-size", "300",
            "--test-size", "100", "--train-steps", "20", "--unlearn-steps", "1",
            "--attack-steps", "1", "--calibrate", "none", "--no-analysis", "--device", "cpu",
            "--threads", "1", "--out", str(out)]


@pytest.mark.slow
def test_digits_study_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI's relearn study with a timm model: every row names it, every accuracy is a real
    percentage, and the 20 training steps fit digits far above chance (10%)."""
    monkeypatch.setenv("DORMANT_CACHE", str(tmp_path / "cache"))
    threads = torch.get_num_threads()
    try:  # one thread: on two shared cores, more only spin on this small model's tiny ops
        assert main(_study(tmp_path / "out", STUDY_MODEL)) == 0
    finally:
        torch.set_num_threads(threads)
    lines = (tmp_path / "out" / "results.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines if line.strip()]
    assert sorted(r["method"] for r in rows) == ["finetune", "original", "retrain"]
    for r in rows:
        assert r["model"] == STUDY_MODEL and r.get("error") is None, r
        for key in ("retain_acc", "test_acc", "forget_acc", "retain_acc_attacked",
                    "train_fit_acc"):
            assert isinstance(r[key], float) and math.isfinite(r[key]), (key, r[key])
            assert 0 <= r[key] <= 100, (key, r[key])
        assert r["train_fit_acc"] > 50 and r["train_steps"] == 20


def _refused(capsys: pytest.CaptureFixture[str], args: list[str], *needles: str) -> None:
    capsys.readouterr()
    assert main(args) == 2
    cap = capsys.readouterr()
    assert "Traceback" not in cap.out + cap.err
    lines = cap.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), cap.err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def test_cli_refuses_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """An unknown name, a size the model cannot take, a hub name and a missing timm: exit 2
    with one line each, before any training (nothing is written)."""
    monkeypatch.setenv("DORMANT_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out"
    _refused(capsys, _study(out, "timm:nope_net"), "unknown timm model 'nope_net'",
             "timm.list_models('*nope*')")
    _refused(capsys, _study(out, "timm:test_vit"), "'timm:test_vit' cannot take 1x8x8 inputs",
             "patch size")
    _refused(capsys, _study(out, "timm:hf-hub:timm/test_vit"), "downloads nothing")
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm now raises ImportError
    _refused(capsys, _study(out, "timm:test_resnet"), "pip install 'dormant[timm]'")
    assert not (out / "results.jsonl").exists()
    with pytest.raises(DormantError, match="pip install 'dormant\\[timm\\]'"):
        create_model(ModelSpec("timm:test_resnet", 1, 10, 8))


def test_patches_must_tile_the_image() -> None:
    """A 16-pixel patch grid would see only 16 of MNIST's 28 rows: refused; 32x32 is fine."""
    with pytest.raises(DormantError, match="16x16 patches do not tile 28x28 images"):
        create_model(ModelSpec("timm:test_vit", 1, 10, 28))
    assert create_model(ModelSpec("timm:test_vit", 1, 10, 32)).patch_embed.grid_size == (2, 2)


def test_store_takes_plain_vit_weights(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    """``store add --arch`` searches the input size of plain weights from 8x8 up: sizes the ViT
    refuses are skipped, not reported, and its 32x32 weights are found."""
    vit = create_model(ModelSpec("timm:test_vit", 1, 10, 32), seed=0)
    plain = tmp_path / "vit.safetensors"
    safetensors.torch.save_file(vit.state_dict(), plain)
    capsys.readouterr()
    assert main(["store", "add", str(tmp_path / "store"), "vit", str(plain),
                 "--arch", "timm:test_vit"]) == 0
    assert "added vit v1" in capsys.readouterr().out
