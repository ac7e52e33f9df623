"""Batched tensor preprocessing for CLIP-style reward models, on the reward's own device.

Rollout images arrive as float tensors ``[N, 3, H, W]`` in ``[0, 1]``, often already on a GPU. The
reference pipelines (HPSv2's ``preprocess_val``, open_clip's ``image_transform(..., is_train=False)``,
transformers' ``CLIPImageProcessor``) work on PIL images: resize the shortest side to the model's
input size with bicubic filtering, centre-crop a square, ``ToTensor`` and normalise with the OpenAI
CLIP mean/std (HPS v2.1: 224 px, bicubic, centre crop, OpenAI mean/std). A PIL round trip per image
would copy every image to the CPU, quantise it to uint8 and serialise the batch, so this module does
the same steps on the tensors:

* resize: ``F.interpolate(mode="bicubic", antialias=True)``; with antialias on, torch uses the same
  separable, support-scaled filter as PIL for downscaling (PIL always antialiases), and the output is
  clamped to ``[0, 1]`` as PIL's uint8 output is. Output sizes follow torchvision's ``Resize(int)``
  (short side = ``size``, long side = ``int(size * long / short)``);
* centre crop: torchvision's offsets (``round((H - h) / 2)``);
* normalise: ``(x - mean) / std``.

The result differs from the PIL path only by PIL's uint8 rounding of the resized image (about 1/255
before normalisation), which is far below what the reward models resolve.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["OPENAI_CLIP_MEAN", "OPENAI_CLIP_STD", "center_crop", "normalize", "preprocess_images", "resize"]

OPENAI_CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

_MODES = {"bicubic": "bicubic", "bilinear": "bilinear"}


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = (int(s) for s in size)
    return h, w


def _interp(x: Tensor, size: tuple[int, int], interpolation: str) -> Tensor:
    if interpolation not in _MODES:
        raise ValueError(f"interpolation must be one of {sorted(_MODES)}, got {interpolation!r}")
    if tuple(x.shape[-2:]) == size:
        return x
    out = F.interpolate(x, size=size, mode=_MODES[interpolation], align_corners=False, antialias=True)
    return out.clamp_(0.0, 1.0)


def resize(x: Tensor, size: int | Sequence[int], *, interpolation: str = "bicubic", mode: str = "shortest") -> Tensor:
    """Resize a batch ``[N, C, H, W]``.

    ``mode="shortest"``: the short side becomes ``size`` (an int), keeping the aspect ratio (torchvision
    ``Resize(size)``); ``"longest"``: the long side becomes ``size``; ``"squash"``: exactly ``size``
    (int or ``(h, w)``), ignoring the aspect ratio.
    """
    h, w = x.shape[-2:]
    if mode == "squash":
        return _interp(x, _pair(size), interpolation)
    if mode not in ("shortest", "longest"):
        raise ValueError(f"resize mode must be 'shortest', 'longest' or 'squash', got {mode!r}")
    if not isinstance(size, int):
        th, tw = _pair(size)
        if th != tw:
            raise ValueError(f"resize mode {mode!r} needs a square target size, got {tuple(size)}")
        size = th
    short, long = (h, w) if h <= w else (w, h)
    if mode == "shortest":
        new_short, new_long = size, int(size * long / short)
    else:
        new_long, new_short = size, int(size * short / long)
    new = (new_short, new_long) if h <= w else (new_long, new_short)
    return _interp(x, new, interpolation)


def center_crop(x: Tensor, size: int | Sequence[int]) -> Tensor:
    """Centre crop ``[..., H, W]`` to ``size`` (zero padding where the image is smaller, as torchvision)."""
    ch, cw = _pair(size)
    h, w = x.shape[-2:]
    if ch > h or cw > w:
        pad_t, pad_l = max(ch - h, 0) // 2, max(cw - w, 0) // 2
        x = F.pad(x, (pad_l, max(cw - w, 0) - pad_l, pad_t, max(ch - h, 0) - pad_t))
        h, w = x.shape[-2:]
    top = round((h - ch) / 2.0)
    left = round((w - cw) / 2.0)
    return x[..., top : top + ch, left : left + cw]


def normalize(x: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    return (x - m) / s


def preprocess_images(
    images: Tensor | Sequence[Tensor],
    size: int | Sequence[int] = 224,
    *,
    crop_size: int | Sequence[int] | None = None,
    mean: Sequence[float] = OPENAI_CLIP_MEAN,
    std: Sequence[float] = OPENAI_CLIP_STD,
    interpolation: str = "bicubic",
    resize_mode: str = "shortest",
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """``[N, 3, H, W]`` (or a list of ``[3, H, W]`` of any sizes) in ``[0, 1]`` -> model input ``[N, 3, h, w]``.

    Resize (``resize_mode``: ``"shortest"`` then centre crop to ``crop_size`` (default ``size``),
    ``"longest"`` then centre pad, or ``"squash"``) and normalise. Computed in float32 on ``device``
    (default: where the images are), returned as ``dtype``.
    """
    if isinstance(images, Tensor):
        batches = [images]
    else:
        batches = [im.unsqueeze(0) if im.ndim == 3 else im for im in images]
        if not batches:
            raise ValueError("no images to preprocess")
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
