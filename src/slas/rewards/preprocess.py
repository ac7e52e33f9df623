"""Batched tensor preprocessing for CLIP-style reward models, on the reward's own device.

Rollout images arrive as float tensors ``[N, 3, H, W]`` in ``[0, 1]``, often already on a GPU. The
reference pipelines (HPSv2's ``preprocess_val``, open_clip's ``image_transform(..., is_train=False)``,
transformers' ``CLIPImageProcessor``) work on PIL images: resize the shortest side to the model's
input size with bicubic filtering, centre-crop a square, ``ToTensor`` and normalise with the OpenAI
CLIP mean/std (HPS v2.1: 224 px, bicubic, centre crop, OpenAI mean/std). A PIL round trip per image
would copy every image to the CPU, quantise it to uint8 and serialise the batch, so this module runs
the same steps as torchvision's tensor kernels (``torchvision.transforms.v2.functional``) on the batch:

* resize: ``resize(..., antialias=True)``; with antialias on, torch uses the same separable,
  support-scaled filter as PIL for downscaling (PIL always antialiases), and the output is clamped to
  ``[0, 1]`` as PIL's uint8 output is (torchvision clamps only uint8 images). Output sizes are
  torchvision's ``Resize(int)`` (short side = ``size``, long side = ``int(size * long / short)``);
* centre crop: torchvision's ``center_crop`` (zero padding where the image is smaller);
* normalise: torchvision's ``normalize``, ``(x - mean) / std``.

The result differs from the PIL path only by PIL's uint8 rounding of the resized image (about 1/255
before normalisation), which is far below what the reward models resolve.

``OPENAI_CLIP_MEAN`` / ``OPENAI_CLIP_STD`` are transformers' constants, and torchvision loads on the
first resize: both cost a second of import time that ``import slas.rewards`` should not pay.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "OPENAI_CLIP_MEAN",
    "OPENAI_CLIP_STD",
    "PREPROCESS_KEYS",
    "center_crop",
    "check_preprocess",
    "normalize",
    "preprocess_images",
    "resize",
]

INTERPOLATIONS = ("bicubic", "bilinear")
RESIZE_MODES = ("shortest", "longest", "squash")
PREPROCESS_KEYS = frozenset({"size", "crop_size", "mean", "std", "interpolation", "resize_mode"})
"""The ``preprocess`` option's keys: the settings of :func:`preprocess_images`."""

OPENAI_CLIP_MEAN: tuple[float, float, float]  # bound on first use, by __getattr__
OPENAI_CLIP_STD: tuple[float, float, float]
_LIBRARY_CONSTANTS = ("OPENAI_CLIP_MEAN", "OPENAI_CLIP_STD")


def _openai_clip(name: str) -> tuple[float, float, float]:
    """transformers' ``OPENAI_CLIP_MEAN`` or ``OPENAI_CLIP_STD`` as a tuple, kept as this module's global."""
    from transformers import image_utils

    value = tuple(float(v) for v in getattr(image_utils, name))
    globals()[name] = value  # later lookups find the global and skip __getattr__
    return value


def __getattr__(name: str) -> tuple[float, float, float]:
    """``OPENAI_CLIP_MEAN`` / ``OPENAI_CLIP_STD`` on first use (PEP 562), so importing this module stays light."""
    if name in _LIBRARY_CONSTANTS:
        return _openai_clip(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _tvf() -> Any:
    """torchvision's v2 functional API (imported when the first image is preprocessed)."""
    from torchvision.transforms.v2 import functional

    return functional


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = (int(s) for s in size)
    return h, w


def _resize_args(size: int | Sequence[int], mode: str) -> dict[str, Any]:
    """torchvision ``resize`` arguments for our resize modes (a list size is exact, ``max_size`` the long side)."""
    if mode == "squash":
        return {"size": list(_pair(size))}
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize mode must be 'shortest', 'longest' or 'squash', got {mode!r}")
    side, other = _pair(size)
    if side != other:
        raise ValueError(f"resize mode {mode!r} needs a square target size, got {tuple(size)}")
    return {"size": [side]} if mode == "shortest" else {"size": None, "max_size": side}


def resize(x: Tensor, size: int | Sequence[int], *, interpolation: str = "bicubic", mode: str = "shortest") -> Tensor:
    """Resize a batch ``[N, C, H, W]`` (antialiased, clamped to [0, 1] as PIL's uint8 output is).

    ``mode="shortest"``: the short side becomes ``size`` (an int), keeping the aspect ratio (torchvision
    ``Resize(size)``); ``"longest"``: the long side becomes ``size``; ``"squash"``: exactly ``size``
    (int or ``(h, w)``), ignoring the aspect ratio. An image already at its target size is returned as is.
    """
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {sorted(INTERPOLATIONS)}, got {interpolation!r}")
    tvf = _tvf()
    out = tvf.resize(x, interpolation=tvf.InterpolationMode(interpolation), antialias=True, **_resize_args(size, mode))
    return x if out is x else out.clamp(0.0, 1.0)


def center_crop(x: Tensor, size: int | Sequence[int]) -> Tensor:
    """Centre crop ``[..., H, W]`` to ``size`` (zero padding where the image is smaller, as torchvision)."""
    return _tvf().center_crop(x, list(_pair(size)))


def normalize(x: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """``(x - mean) / std`` per channel of ``[..., C, H, W]``."""
    return _tvf().normalize(x, mean=list(mean), std=list(std))


def check_preprocess(preprocess: Mapping[str, Any] | None) -> dict[str, Any]:
    """A copy of a ``preprocess`` option (``{}`` for None); unknown keys raise ``ValueError``."""
    unknown = set(preprocess or {}) - PREPROCESS_KEYS
    if unknown:
        raise ValueError(f"preprocess: unknown key(s) {sorted(unknown)}; known: {sorted(PREPROCESS_KEYS)}")
    return dict(preprocess or {})


def preprocess_images(
    images: Tensor | Sequence[Tensor],
    size: int | Sequence[int] = 224,
    *,
    crop_size: int | Sequence[int] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    interpolation: str = "bicubic",
    resize_mode: str = "shortest",
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """``[N, 3, H, W]`` (or a list of ``[3, H, W]`` of any sizes) in ``[0, 1]`` -> model input ``[N, 3, h, w]``.

    Resize (``resize_mode``: ``"shortest"`` then centre crop to ``crop_size`` (default ``size``),
    ``"longest"`` then centre pad, or ``"squash"``) and normalise (``mean`` / ``std``, default the
    OpenAI CLIP ones). Computed in float32 on ``device`` (default: where the images are), returned as
    ``dtype``.
    """
    if isinstance(images, Tensor):
        batches = [images]
    else:
        batches = [im.unsqueeze(0) if im.ndim == 3 else im for im in images]
        if not batches:
            raise ValueError("no images to preprocess")
    mean = mean if mean is not None else _openai_clip("OPENAI_CLIP_MEAN")
    std = std if std is not None else _openai_clip("OPENAI_CLIP_STD")
    out = []
    for x in batches:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"images must be [N, 3, H, W], got {tuple(x.shape)}")
        x = x.to(device=device if device is not None else x.device, dtype=torch.float32)
        x = resize(x, size, interpolation=interpolation, mode=resize_mode)
        if resize_mode != "squash" or crop_size is not None:
            x = center_crop(x, crop_size if crop_size is not None else size)
        out.append(normalize(x, mean, std))
    result = out[0] if len(out) == 1 else torch.cat(out)
    return result.to(dtype)
