"""Dataset sources: real shapes and values, the cache, and one-line errors for bad input."""

from __future__ import annotations

import dataclasses
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dormant.data import sources
from dormant.data.sources import available_sources, load_dataset
from dormant.errors import DormantError


@contextmanager
def _raises(match: str) -> Iterator[None]:
    """DormantError whose message matches and, like every user-facing error, is one line."""
    with pytest.raises(DormantError, match=match) as info:
        yield
    assert "\n" not in str(info.value)


def _no_decoding(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    def boom(*args: object) -> None:
        raise AssertionError(f"{name} was decoded again instead of read from the cache")

    entry = sources._REGISTRY[name]
    monkeypatch.setitem(sources._REGISTRY, name, dataclasses.replace(entry, loader=boom))


def test_available_sources() -> None:
    assert available_sources() == [
        "cifar10", "cifar100", "digits", "fashion-mnist",
        "imagefolder:PATH", "mnist", "npz:PATH", "svhn",
    ]  # fmt: skip


def test_unknown_dataset() -> None:
    with _raises(r"unknown dataset 'foo'; choose one of: cifar10, .*mnist"):
        load_dataset("foo")


def test_argument_mismatch(tmp_path: Path) -> None:
    with _raises("needs an argument; write it as npz:PATH"):
        load_dataset("npz", cache_dir=tmp_path)
    with _raises("takes no argument"):
        load_dataset("digits:x", cache_dir=tmp_path)


# --- digits and the cache ------------------------------------------------------------------


def test_digits(tmp_path: Path) -> None:
    ds = load_dataset("digits", cache_dir=tmp_path / "a")
    assert ds.x_train.shape == (1437, 1, 8, 8) and ds.x_test.shape == (360, 1, 8, 8)
    assert ds.x_train.dtype == torch.uint8 and ds.y_train.dtype == torch.int64
    assert int(ds.x_train.max()) == 255 and int(ds.x_train.min()) == 0
    assert ds.classes == tuple("0123456789")
    per_class = torch.bincount(ds.y_test, minlength=10)
    assert int((per_class - 36).abs().max()) <= 1
    again = load_dataset("digits", cache_dir=tmp_path / "b")
    assert again.fingerprint == ds.fingerprint and len(ds.fingerprint) == 64


def test_cache_hit_does_not_decode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = load_dataset("digits", cache_dir=tmp_path)
    _no_decoding(monkeypatch, "digits")
    second = load_dataset("digits", cache_dir=tmp_path)
    assert second.fingerprint == first.fingerprint
    assert torch.equal(second.x_train, first.x_train) and torch.equal(second.y_test, first.y_test)
    assert second.classes == first.classes


def test_corrupt_cache_is_rebuilt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = load_dataset("digits", cache_dir=tmp_path)
    (cached,) = (tmp_path / "data").glob("*.safetensors")
    cached.write_bytes(cached.read_bytes()[:1000])  # truncated, as after a crash
    with pytest.warns(UserWarning, match="unreadable dataset cache"):
        rebuilt = load_dataset("digits", cache_dir=tmp_path)
    assert rebuilt.fingerprint == first.fingerprint
    _no_decoding(monkeypatch, "digits")  # and the rebuilt file is a good cache again
    assert load_dataset("digits", cache_dir=tmp_path).fingerprint == first.fingerprint
    assert not list((tmp_path / "data").glob(".tmp-*"))


def test_changed_input_file_invalidates_cache(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    x = np.zeros((4, 5, 5), np.uint8)
    y = np.array([0, 1, 0, 1])
    np.savez(path, x_train=x, y_train=y, x_test=x, y_test=y)
    a = load_dataset(f"npz:{path}", cache_dir=tmp_path / "c")
    np.savez(path, x_train=x + 7, y_train=y, x_test=x, y_test=y)
    b = load_dataset(f"npz:{path}", cache_dir=tmp_path / "c")
    assert a.fingerprint != b.fingerprint and int(b.x_train.max()) == 7


# --- npz -----------------------------------------------------------------------------------


def test_npz_nhwc_float(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x_tr = rng.random((6, 4, 5, 3), dtype=np.float32)
    x_te = rng.random((2, 4, 5, 3), dtype=np.float32)
    path = tmp_path / "f.npz"
    np.savez(path, x_train=x_tr, y_train=np.arange(6) % 3, x_test=x_te, y_test=np.array([2, 0]))
    ds = load_dataset(f"npz:{path}", cache_dir=tmp_path)
    assert ds.x_train.shape == (6, 3, 4, 5) and ds.x_train.dtype == torch.uint8
    want = np.round(x_tr.transpose(0, 3, 1, 2) * 255).astype(np.uint8)
    assert np.array_equal(ds.x_train.numpy(), want)
    assert ds.y_train.tolist() == [0, 1, 2, 0, 1, 2] and ds.y_train.dtype == torch.int64
    assert ds.classes == ("0", "1", "2") and ds.name == f"npz:{path}"


def test_npz_nhw_uint8_with_classes(tmp_path: Path) -> None:
    x = np.arange(3 * 6 * 7, dtype=np.uint8).reshape(3, 6, 7)
    path = tmp_path / "u.npz"
    np.savez(
        path, x_train=x, y_train=np.array([1, 0, 1], np.int32), x_test=x[:1],
        y_test=np.array([0]), classes=np.array(["cat", "dog"]),
    )  # fmt: skip
    ds = load_dataset(f"npz:{path}", cache_dir=tmp_path)
    assert ds.x_train.shape == (3, 1, 6, 7)
    assert np.array_equal(ds.x_train[:, 0].numpy(), x)
    assert ds.classes == ("cat", "dog") and ds.y_train.tolist() == [1, 0, 1]


def test_npz_missing_key(tmp_path: Path) -> None:
    path = tmp_path / "m.npz"
    np.savez(path, x_train=np.zeros((1, 2, 2), np.uint8), y_train=np.zeros(1, int))
    with _raises(r"has no 'x_test' array"):
        load_dataset(f"npz:{path}", cache_dir=tmp_path)


def test_npz_refuses_pickle(tmp_path: Path) -> None:
    path = tmp_path / "p.npz"
    objs = np.empty(2, dtype=object)
    objs[:] = [{"a": 1}, "b"]
    x = np.zeros((2, 2, 2), np.uint8)
    np.savez(path, x_train=x, y_train=objs, x_test=x, y_test=np.zeros(2, int))
    with _raises(r"'y_train' holds Python objects that need pickle, which is refused"):
        load_dataset(f"npz:{path}", cache_dir=tmp_path)


def test_npz_bad_values(tmp_path: Path) -> None:
    path = tmp_path / "b.npz"
    x = np.full((2, 3, 3), 2.0)
    np.savez(path, x_train=x, y_train=np.zeros(2, int), x_test=x, y_test=np.zeros(2, int))
    with _raises(r"outside \[0, 1\]"):
        load_dataset(f"npz:{path}", cache_dir=tmp_path)


# --- imagefolder ---------------------------------------------------------------------------


def _make_tree(root: Path, size: tuple[int, int] = (8, 8)) -> dict[str, np.ndarray]:
    """train/test x cat/dog x 3 RGB PNGs under root/tree; returns pixels by relative path."""
    rng = np.random.default_rng(1)
    pixels = {}
    for split in ("train", "test"):
        for cls in ("dog", "cat"):
            for i in range(3):
                rel = f"{split}/{cls}/{i}.png"
                arr = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
                (root / "tree" / rel).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(arr).save(root / "tree" / rel)
                pixels[rel] = arr
    return pixels


def test_imagefolder_folder_and_targz_agree(tmp_path: Path) -> None:
    pixels = _make_tree(tmp_path)
    archive = tmp_path / "tree.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(tmp_path / "tree", arcname="tree")  # a top-level folder, like real archives
    folder = load_dataset(f"imagefolder:{tmp_path / 'tree'}", cache_dir=tmp_path / "c")
    packed = load_dataset(f"imagefolder:{archive}", cache_dir=tmp_path / "c")
    assert folder.classes == packed.classes == ("cat", "dog")
    assert folder.x_train.shape == (6, 3, 8, 8) and folder.x_test.shape == (6, 3, 8, 8)
    assert folder.y_train.tolist() == [0, 0, 0, 1, 1, 1]
    for a, b in ((folder.x_train, packed.x_train), (folder.y_test, packed.y_test)):
        assert torch.equal(a, b)
    assert folder.fingerprint == packed.fingerprint
    want = pixels["test/dog/2.png"].transpose(2, 0, 1)
    assert np.array_equal(folder.x_test[5].numpy(), want)


def test_imagefolder_gray_and_val(tmp_path: Path) -> None:
    for split, cls in (("train", "a"), ("train", "b"), ("val", "a")):
        (tmp_path / split / cls).mkdir(parents=True)
        Image.new("L", (5, 4), color=9).save(tmp_path / split / cls / "x.png")
    ds = load_dataset(f"imagefolder:{tmp_path}", cache_dir=tmp_path / "c")
    assert ds.x_train.shape == (2, 1, 4, 5) and ds.x_test.shape == (1, 1, 4, 5)
    assert int(ds.x_train.max()) == 9 and ds.classes == ("a", "b")


def test_imagefolder_mismatched_sizes(tmp_path: Path) -> None:
    _make_tree(tmp_path)
    Image.new("RGB", (9, 8)).save(tmp_path / "tree" / "train" / "dog" / "odd.png")
    with _raises(r"train/dog/odd.png is \(3, 8, 9\).*resize all images to one size"):
        load_dataset(f"imagefolder:{tmp_path / 'tree'}", cache_dir=tmp_path / "c")


def test_imagefolder_bad_paths(tmp_path: Path) -> None:
    with _raises("imagefolder path .*nope does not exist"):
        load_dataset(f"imagefolder:{tmp_path / 'nope'}", cache_dir=tmp_path)
    (tmp_path / "only" / "test" / "a").mkdir(parents=True)
    Image.new("RGB", (2, 2)).save(tmp_path / "only" / "test" / "a" / "x.png")
    with _raises("has no train/<class>/<image> files"):
        load_dataset(f"imagefolder:{tmp_path / 'only'}", cache_dir=tmp_path)
    (tmp_path / "junk.tar.gz").write_bytes(b"\x1f\x8b not really gzip")
    with _raises("is not a readable tar archive"):
        load_dataset(f"imagefolder:{tmp_path / 'junk.tar.gz'}", cache_dir=tmp_path)


# --- torchvision sets ----------------------------------------------------------------------


def test_torchvision_missing_files(tmp_path: Path) -> None:
    with _raises(r"dataset 'cifar10' not found under .*; pass --data-root .*, or --download"):
        load_dataset("cifar10", root=tmp_path, cache_dir=tmp_path)


def test_mnist_from_shared(shared_datasets: Path, tmp_path: Path) -> None:
    ds = load_dataset("mnist", root=shared_datasets, cache_dir=tmp_path)
    assert ds.x_train.shape == (60000, 1, 28, 28) and ds.x_test.shape == (10000, 1, 28, 28)
    assert int(ds.y_train[0]) == 5 and ds.num_classes == 10


def test_cifar10_jpeg_archive(
    shared_datasets: Path, cifar_jpeg_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = f"imagefolder:{shared_datasets / 'cifar10-jpeg.tar.gz'}"
    ds = load_dataset(spec, cache_dir=cifar_jpeg_cache)
    assert ds.x_train.shape == (50000, 3, 32, 32) and ds.x_test.shape == (10000, 3, 32, 32)
    assert ds.classes[0] == "airplane" and ds.num_classes == 10
    assert torch.bincount(ds.y_train).tolist() == [5000] * 10
    assert torch.bincount(ds.y_test).tolist() == [1000] * 10
    _no_decoding(monkeypatch, "imagefolder")
    assert load_dataset(spec, cache_dir=cifar_jpeg_cache).fingerprint == ds.fingerprint
