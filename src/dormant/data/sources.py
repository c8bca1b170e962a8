"""Named dataset sources (``mnist``, ``imagefolder:PATH``, ...) decoded once, then cached.

Every source turns its inputs into a :class:`Dataset`; the result is stored as safetensors under
``<cache_dir>/data/<key>.safetensors`` where the key hashes the source and the size and mtime of
every input file, so a later load with unchanged inputs skips decoding entirely.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import tarfile
import warnings
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch

from dormant import plugins
from dormant.data.dataset import Dataset
from dormant.errors import DormantError, DormantWarning, need_file

Loader = Callable[[str | None, Path | None, bool], Dataset]
# key material for the cache: anything JSON-serialisable that changes when the inputs change
Inputs = Callable[[str | None, Path | None], Any]

# bump when a loader's decoding changes, so stale caches are never served
_CACHE_VERSION = 1


@dataclasses.dataclass(frozen=True)
class _Source:
    loader: Loader
    inputs: Inputs
    takes_arg: bool
    usage: str


_REGISTRY: dict[str, _Source] = {}


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def default_cache_dir() -> Path:
    env = os.environ.get("DORMANT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "dormant"


def available_sources() -> list[str]:
    plugins.load()
    return sorted(s.usage for s in _REGISTRY.values())


def register_source(name: str, *, inputs: Inputs | None = None) -> Callable[[Loader], Loader]:
    """Register ``fn(arg, root, download) -> Dataset`` under ``name``.

    ``name`` may end in ``:PATH`` (or any ``:ARG``) to say the source needs an argument.
    ``inputs(arg, root)`` returns cache-key material; by default it stats the files under
    ``arg`` (prefixed sources) or ``root``.
    """
    base, sep, _ = name.partition(":")
    base = base.lower()

    def deco(fn: Loader) -> Loader:
        default = _path_inputs if sep else _root_inputs
        plugins.claim("datasets", base, _REGISTRY, _Source(fn, inputs or default, bool(sep), name),
                      fn.__module__)
        return fn

    return deco


def load_dataset(
    spec: str,
    *,
    root: str | Path | None = None,
    download: bool = False,
    cache_dir: str | Path | None = None,
) -> Dataset:
    """Load ``name`` or ``name:ARG``, from the cache when its inputs are unchanged."""
    name, sep, arg_text = spec.strip().partition(":")
    name = name.lower()
    plugins.load()
    plugins.refuse_clash("datasets", name)
    source = _REGISTRY.get(name)
    if source is None:
        raise DormantError(
            f"unknown dataset {name!r}; choose one of: {', '.join(available_sources())}"
        )
    arg: str | None = arg_text if sep else None
    if source.takes_arg and not arg:
        raise DormantError(f"dataset {name!r} needs an argument; write it as {source.usage}")
    if not source.takes_arg and arg is not None:
        raise DormantError(f"dataset {name!r} takes no argument; write it as plain {name!r}")
    display = name if arg is None else f"{name}:{arg}"
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    root_path = Path(root).expanduser() if root is not None else cache / "downloads"
    root_path = root_path.resolve()

    path = _cache_path(cache, name, source, arg, root_path)
    ds = _read_cache(path, display)
    if ds is not None:
        return ds
    ds = source.loader(arg, root_path, download)
    if ds.name != display:
        ds = dataclasses.replace(ds, name=display)
    # re-key after loading: a download may have created the files the key stats
    _write_cache(_cache_path(cache, name, source, arg, root_path), ds)
    return ds


# --- cache -------------------------------------------------------------------------------------


def _stat_tree(path: Path, max_depth: int | None = None) -> list[list[Any]]:
    """(relative name, size, mtime_ns) for ``path`` or every file below it, sorted."""
    if path.is_file():
        st = path.stat()
        return [[path.name, st.st_size, st.st_mtime_ns]]
    out = []
    for dirpath, dirnames, filenames in os.walk(path):
        rel = Path(dirpath).relative_to(path)
        if max_depth is not None and len(rel.parts) >= max_depth:
            dirnames.clear()
        for f in filenames:
            st = (Path(dirpath) / f).stat()
            out.append([(rel / f).as_posix(), st.st_size, st.st_mtime_ns])
    return sorted(out)


def _path_inputs(arg: str | None, root: Path | None) -> Any:
    p = Path(arg or "").expanduser().resolve()
    return [str(p), _stat_tree(p) if p.exists() else None]


def _root_inputs(arg: str | None, root: Path | None) -> Any:
    if root is None or not root.exists():
        return [str(root), None]
    return [str(root), _stat_tree(root, max_depth=3)]


def _cache_path(
    cache: Path, name: str, source: _Source, arg: str | None, root: Path | None
) -> Path:
    material = json.dumps([_CACHE_VERSION, name, source.inputs(arg, root)])
    return cache / "data" / f"{hashlib.sha256(material.encode()).hexdigest()}.safetensors"


def _read_cache(path: Path, name: str) -> Dataset | None:
    if not path.is_file():
        return None
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        t = load_file(str(path))
        return Dataset(
            name=name,
            x_train=t["x_train"],
            y_train=t["y_train"],
            x_test=t["x_test"],
            y_test=t["y_test"],
            classes=tuple(json.loads(meta["classes"])),
            fingerprint=meta["fingerprint"],
        )
    except Exception as e:  # any unreadable cache file is just a miss: rebuild it
        _warn_once(path, f"ignoring the unreadable dataset cache {path} ({_one_line(e)}); it "
                         "is rebuilt")
        return None


_WARNED: set[str] = set()


def _warn_once(path: Path, text: str) -> None:
    """One warning line per cache file and process: a study loads its data many times."""
    if str(path) not in _WARNED:
        _WARNED.add(str(path))
        warnings.warn(text, DormantWarning, stacklevel=4)


def _write_cache(path: Path, ds: Dataset) -> None:
    from safetensors.torch import save

    from dormant.store.files import atomic_write_bytes

    tensors = {
        k: getattr(ds, k).contiguous() for k in ("x_train", "y_train", "x_test", "y_test")
    }
    meta = {"name": ds.name, "classes": json.dumps(list(ds.classes)), "fingerprint": ds.fingerprint}
    try:
        # serialised in memory, then written by the one atomic writer: a full disk leaves no
        # temporary file (safetensors' own file writer raises no OSError, and left one)
        atomic_write_bytes(path, save(tensors, metadata=meta))
        os.chmod(path, 0o644)  # a cache may be shared: readable whatever the umask
    except OSError as e:
        # a read-only or full cache costs speed, not correctness
        where = f" ({e.filename})" if e.filename and str(e.filename) != str(path) else ""
        _warn_once(path, f"could not write the dataset cache {path}: {e.strerror or e}{where}; "
                         "the data is decoded again on every run until DORMANT_CACHE is a "
                         "writable folder with free space")


# --- digits ------------------------------------------------------------------------------------


def _sklearn_inputs(arg: str | None, root: Path | None) -> Any:
    # the installed version from its metadata: importing sklearn costs 1.5 s of every run
    from importlib.metadata import version

    return ["sklearn", version("scikit-learn")]


@register_source("digits", inputs=_sklearn_inputs)
def _load_digits(arg: str | None, root: Path | None, download: bool) -> Dataset:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = np.round(bunch.data.reshape(-1, 1, 8, 8) * 255.0 / 16.0).astype(np.uint8)
    y = bunch.target.astype(np.int64)
    # sklearn ships no test split; a fixed stratified one keeps results comparable
    tr, te = train_test_split(np.arange(len(y)), test_size=0.2, random_state=0, stratify=y)
    return Dataset(
        name="digits",
        x_train=torch.from_numpy(x[tr]),
        y_train=torch.from_numpy(y[tr]),
        x_test=torch.from_numpy(x[te]),
        y_test=torch.from_numpy(y[te]),
        classes=tuple(str(i) for i in range(10)),
    )


# --- torchvision -------------------------------------------------------------------------------


def _torchvision_source(name: str, cls_name: str, files: Callable[[Any], list[str]]) -> None:
    """Register a torchvision dataset; ``files(cls)`` names what it reads under root."""

    def inputs(arg: str | None, root: Path | None) -> Any:
        assert root is not None
        stats = {f: _stat_tree(root / f) for f in files(_tv_class(cls_name)) if (root / f).exists()}
        return [str(root), stats]

    def loader(arg: str | None, root: Path | None, download: bool) -> Dataset:
        assert root is not None
        cls = _tv_class(cls_name)
        splits = []
        for train in (True, False):
            kw: dict[str, Any] = (
                {"split": "train" if train else "test"} if cls_name == "SVHN" else {"train": train}
            )
            try:
                splits.append(cls(str(root), download=download, **kw))
            except (RuntimeError, OSError) as e:
                if not download:
                    raise DormantError(
                        f"dataset {name!r} not found under {root}; pass --data-root to the "
                        "folder that holds it, or --download"
                    ) from e
                raise DormantError(
                    f"could not download dataset {name!r} into {root} ({_one_line(e)}); check the "
                    "network, or pass --data-root to a folder that already holds it"
                ) from e
        xs, ys = [], []
        for d in splits:
            x = torch.as_tensor(np.asarray(d.data))
            if x.ndim == 3:  # MNIST-style (N, H, W)
                x = x.unsqueeze(1)
            elif cls_name.startswith("CIFAR"):  # numpy NHWC
                x = x.permute(0, 3, 1, 2)
            y = d.labels if cls_name == "SVHN" else d.targets
            xs.append(x.contiguous())
            ys.append(torch.as_tensor(np.asarray(y), dtype=torch.int64))
        classes = getattr(splits[0], "classes", None) or [str(i) for i in range(10)]
        return Dataset(name, xs[0], ys[0], xs[1], ys[1], tuple(str(c) for c in classes))

    register_source(name, inputs=inputs)(loader)


def _tv_class(cls_name: str) -> Any:
    import torchvision.datasets as tvd

    return getattr(tvd, cls_name)


_torchvision_source("mnist", "MNIST", lambda cls: [cls.__name__])
_torchvision_source("fashion-mnist", "FashionMNIST", lambda cls: [cls.__name__])
_torchvision_source("cifar10", "CIFAR10", lambda cls: [cls.base_folder])
_torchvision_source("cifar100", "CIFAR100", lambda cls: [cls.base_folder])
_torchvision_source("svhn", "SVHN", lambda cls: [v[1] for v in cls.split_list.values()])


# --- imagefolder -------------------------------------------------------------------------------

_IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp", ".tif", ".tiff"}
_ARCHIVE_EXTS = (".tar", ".tar.gz", ".tgz")


def _iter_images(path: Path) -> Iterator[tuple[tuple[str, ...], Callable[[], bytes]]]:
    """(path parts, read-bytes thunk) for each candidate image file, folder or tar alike."""
    if path.is_dir():
        for p in path.rglob("*"):
            if p.is_file():
                yield p.relative_to(path).parts, p.read_bytes
        return
    try:
        # stream mode: a .tar.gz only decompresses fast when read front to back
        with tarfile.open(path, mode="r|*") as tf:
            for m in tf:
                if m.isfile():
                    data = tf.extractfile(m).read()  # type: ignore[union-attr]
                    yield PurePosixPath(m.name).parts, lambda data=data: data
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise DormantError(
            f"imagefolder {path} is not a readable tar archive ({_one_line(e)}); "
            f"pass a folder or a {'/'.join(_ARCHIVE_EXTS)} file"
        ) from e


def _decode(data: bytes, mode: Any, where: str) -> torch.Tensor:
    from torchvision.io import ImageReadMode, decode_image

    try:
        return decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=mode)
    except RuntimeError:
        pass
    # formats libtorchvision lacks (bmp, tiff) go through PIL
    from PIL import Image

    try:
        pil_mode = {ImageReadMode.GRAY: "L", ImageReadMode.RGB: "RGB"}.get(mode)
        img = Image.open(io.BytesIO(data))
        arr = np.asarray(img.convert(pil_mode) if pil_mode else img)
    except Exception as e:
        raise DormantError(
            f"cannot decode image {where} ({_one_line(e)}); re-save it or remove it"
        ) from e
    t = torch.from_numpy(arr.copy())
    return t.unsqueeze(0) if t.ndim == 2 else t.permute(2, 0, 1)


@register_source("imagefolder:PATH")
def _load_imagefolder(arg: str | None, root: Path | None, download: bool) -> Dataset:
    from torchvision.io import ImageReadMode

    path = Path(arg or "").expanduser()
    if not path.exists():
        raise DormantError(f"imagefolder path {path} does not exist; pass a folder or .tar.gz")
    # files keyed (split, class, name); the tree may sit under any top-level folders
    found: dict[str, dict[str, dict[str, bytes]]] = {}
    prefixes: set[tuple[str, ...]] = set()
    for parts, read in _iter_images(path):
        if len(parts) < 3 or parts[-3] not in ("train", "test", "val"):
            continue
        if parts[-1].startswith(".") or PurePosixPath(parts[-1]).suffix.lower() not in _IMAGE_EXTS:
            continue  # e.g. .DS_Store, macOS ._ resource forks, README files
        prefixes.add(parts[:-3])
        found.setdefault(parts[-3], {}).setdefault(parts[-2], {})[parts[-1]] = read()
    if len(prefixes) > 1:
        trees = ", ".join(sorted("/".join(p) or "." for p in prefixes))
        raise DormantError(
            f"imagefolder {path} holds more than one train/test tree ({trees}); keep only one"
        )
    if "train" not in found:
        raise DormantError(
            f"imagefolder {path} has no train/<class>/<image> files; lay it out as "
            "train/<class>/*.png and test/<class>/*.png"
        )
    test_split = "test" if "test" in found else "val"
    if test_split not in found:
        raise DormantError(
            f"imagefolder {path} has no test/ (or val/) split; add test/<class>/<image> files"
        )
    classes = sorted(set(found["train"]) | set(found[test_split]))
    index = {c: i for i, c in enumerate(classes)}

    ordered: list[tuple[str, str, str, bytes]] = []
    for split in ("train", test_split):
        for c in sorted(found[split]):
            for f, data in sorted(found[split][c].items()):
                ordered.append((split, c, f, data))
    with warnings.catch_warnings():
        # torchvision 0.29 warns on every decode call: 60k identical warnings for CIFAR-10
        warnings.filterwarnings("ignore", "The image decoding", DeprecationWarning)
        # the first image fixes both colour mode and size for the whole set
        first = _decode(ordered[0][3], ImageReadMode.UNCHANGED, "/".join(ordered[0][:3]))
        mode = ImageReadMode.GRAY if first.shape[0] <= 2 else ImageReadMode.RGB
        shape = (1 if mode == ImageReadMode.GRAY else 3, *first.shape[1:])
        x = torch.empty((len(ordered), *shape), dtype=torch.uint8)
        y = torch.empty(len(ordered), dtype=torch.int64)
        for i, (split, c, f, data) in enumerate(ordered):
            where = "/".join((split, c, f))
            img = _decode(data, mode, where)
            if tuple(img.shape) != shape:
                raise DormantError(
                    f"imagefolder {path}: {where} is {tuple(img.shape)} but the first image is "
                    f"{shape}; resize all images to one size"
                )
            x[i] = img
            y[i] = index[c]
    n_train = sum(1 for s in ordered if s[0] == "train")
    return Dataset(
        f"imagefolder:{arg}", x[:n_train], y[:n_train], x[n_train:], y[n_train:], tuple(classes)
    )


# --- npz ---------------------------------------------------------------------------------------


def _npz_images(a: np.ndarray, key: str, path: Path) -> torch.Tensor:
    if a.ndim == 3:  # (N, H, W)
        a = a[:, None]
    elif a.ndim == 4:
        nhwc, nchw = a.shape[-1] in (1, 3, 4), a.shape[1] in (1, 3, 4)
        if nhwc and nchw:  # only tiny images are ambiguous: NHWC unless only NCHW is square
            nhwc = not (a.shape[2] == a.shape[3] and a.shape[1] != a.shape[2])
        if not (nhwc or nchw):
            raise DormantError(
                f"npz {path}: {key} has shape {a.shape} with no 1/3/4-channel axis; save images "
                "as (N,H,W), (N,H,W,C) or (N,C,H,W)"
            )
        if nhwc:
            a = a.transpose(0, 3, 1, 2)
    else:
        raise DormantError(
            f"npz {path}: {key} has shape {a.shape}; save images as (N,H,W), (N,H,W,C) or (N,C,H,W)"
        )
    if np.issubdtype(a.dtype, np.floating):
        if a.size and not (np.isfinite(a).all() and a.min() >= 0 and a.max() <= 1):
            raise DormantError(
                f"npz {path}: {key} is {a.dtype} with values outside [0, 1]; save float images "
                "scaled to [0, 1], or uint8 0..255"
            )
        a = np.round(a * 255.0).astype(np.uint8)
    elif a.dtype != np.uint8:
        raise DormantError(
            f"npz {path}: {key} is {a.dtype}; save images as uint8 0..255 or float in [0, 1]"
        )
    return torch.from_numpy(np.ascontiguousarray(a))


def _npz_labels(a: np.ndarray, key: str, path: Path) -> torch.Tensor:
    if a.ndim == 2 and a.shape[1] == 1:
        a = a[:, 0]
    if not np.issubdtype(a.dtype, np.integer) or a.ndim != 1:
        raise DormantError(
            f"npz {path}: {key} is {a.dtype} {a.shape}; save labels as a 1-D integer array"
        )
    return torch.from_numpy(a.astype(np.int64))


@register_source("npz:PATH")
def _load_npz(arg: str | None, root: Path | None, download: bool) -> Dataset:
    path = Path(arg or "").expanduser()
    need_file(path, "npz file", "pass npz:PATH to an existing .npz", suffix=".npz")
    try:
        npz = np.load(path, allow_pickle=False)  # pickles can run code: never load them
    except Exception as e:
        raise DormantError(
            f"npz {path} cannot be read ({_one_line(e)}); save it with numpy.savez"
        ) from e
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise DormantError(f"npz {path} is a single array, not an .npz; save it with numpy.savez")

    def get(key: str) -> np.ndarray:
        if key not in npz.files:
            raise DormantError(
                f"npz {path} has no {key!r} array (it has: {', '.join(npz.files) or 'none'}); "
                "save x_train, y_train, x_test, y_test"
            )
        try:
            return npz[key]
        except ValueError as e:
            raise DormantError(
                f"npz {path}: {key!r} holds Python objects that need pickle, which is refused "
                "for safety; save plain numeric (or string) arrays"
            ) from e

    with npz:
        x_tr, x_te = (_npz_images(get(k), k, path) for k in ("x_train", "x_test"))
        y_tr, y_te = (_npz_labels(get(k), k, path) for k in ("y_train", "y_test"))
        if "classes" in npz.files:
            classes = tuple(str(c) for c in get("classes").ravel())
        else:
            y_all = torch.cat([y_tr, y_te])
            n = int(y_all.max()) + 1 if len(y_all) else 0
            classes = tuple(str(i) for i in range(n))
    return Dataset(f"npz:{arg}", x_tr, y_tr, x_te, y_te, classes)
