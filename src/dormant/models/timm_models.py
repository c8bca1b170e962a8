"""Any timm classifier by name: ``timm:<name>`` (random init, nothing downloaded).

timm builds the stem for ``in_chans`` channels itself, so grey images need no repeat. Models
with a fixed token grid (ViTs, Swin, MaxViT, ...) take ``img_size`` and are built for the
dataset's size, provided their patches tile it; the others are fully convolutional and take
any size their downsampling leaves at least one pixel of. Whether a model takes the size is
settled at build time, by one forward pass per architecture, channel count and size, so a
study refuses it in one line before any training instead of failing in its first batch.
"""

from __future__ import annotations

import torch
from torch import nn

from dormant.errors import DormantError
from dormant.models.registry import ModelSpec, register_model

PREFIX = "timm"
_FITS: set[tuple[str, int, int]] = set()
"""(name, channels, size) already shown to give logits; the probe then costs nothing."""


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return (text[:200] + "...") if len(text) > 200 else text or type(e).__name__


def _refuse(spec: ModelSpec, e: BaseException) -> DormantError:
    s, c = spec.image_size, spec.in_channels
    return DormantError(
        f"model {spec.name!r} cannot take {c}x{s}x{s} inputs ({_one_line(e)}); pick one "
        "that can (e.g. timm:test_resnet or timm:resnet10t, from 8x8 up) or a dataset of larger "
        "images"
    )


@register_model(PREFIX, prefix=True)
def timm_model(spec: ModelSpec) -> nn.Module:
    try:
        import timm
    except ImportError:
        raise DormantError(
            f"model {spec.name!r} needs timm, which is not installed: "
            "pip install 'dormant[timm]'"
        ) from None

    name = spec.name.split(":", 1)[1]
    if ":" in name or "/" in name:
        raise DormantError(
            f"model {spec.name!r} names a hub or file; dormant builds timm models from an "
            "architecture name only, with random weights, and downloads nothing"
        )
    if not timm.is_model(name):
        stem = name.split(".")[0].split("_")[0] or "vit"
        raise DormantError(
            f"unknown timm model {name!r}; list the names with timm.list_models('*{stem}*')"
        )
    args = dict(pretrained=False, num_classes=spec.num_classes, in_chans=spec.in_channels)
    try:
        try:
            net = timm.create_model(name, img_size=spec.image_size, **args)
        except TypeError as e:
            # a fully convolutional model has no token grid and so no img_size argument
            if "img_size" not in str(e):
                raise
            net = timm.create_model(name, **args)
    except (RuntimeError, ValueError, AssertionError, ZeroDivisionError) as e:
        raise _refuse(spec, e) from None
    _check_patches(net, spec)
    _probe(net, spec, name)
    return net


def _check_patches(net: nn.Module, spec: ModelSpec) -> None:
    """A patch grid must tile the image: where it does not, a ViT built with
    ``strict_img_size`` silently drops the last rows and columns (a 16-pixel grid sees 16 of
    MNIST's 28), and the others fail in their first forward."""
    from timm.layers import PatchEmbed

    embed = next((m for m in net.modules() if isinstance(m, PatchEmbed)), None)
    if embed is None or getattr(embed, "dynamic_img_pad", False):
        return
    ph, pw = embed.patch_size
    s = spec.image_size
    if s % ph or s % pw:
        raise DormantError(
            f"model {spec.name!r} cannot take {spec.in_channels}x{s}x{s} inputs: its {ph}x{pw} "
            f"patches do not tile {s}x{s} images; pick one whose patch size divides {s} (the "
            "name says it, e.g. vit_small_patch8_224) or a convolutional one (e.g. "
            "timm:test_resnet)"
        )


def _probe(net: nn.Module, spec: ModelSpec, name: str) -> None:
    """One eval-mode forward of a blank image; the model is left in train mode, as built.
    Eval mode keeps BatchNorm statistics still and draws no dropout, so seeded
    initialisation stays reproducible whether or not the probe runs."""
    key = (name, spec.in_channels, spec.image_size)
    if key in _FITS:
        return
    x = torch.zeros(1, spec.in_channels, spec.image_size, spec.image_size)
    try:
        with torch.no_grad():
            out = net.eval()(x)
    except (RuntimeError, ValueError, AssertionError, IndexError, ZeroDivisionError) as e:
        raise _refuse(spec, e) from None
    finally:
        net.train()
    if tuple(out.shape) != (1, spec.num_classes):
        raise _refuse(spec, ValueError(f"its output has shape {tuple(out.shape)}, not "
                                       f"(batch, {spec.num_classes})"))
    _FITS.add(key)
