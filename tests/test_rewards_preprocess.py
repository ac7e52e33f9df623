"""Reward preprocessing on torchvision's tensor kernels against the hand-written version it replaced.

``slas.rewards.preprocess`` used to resize, crop and normalise with its own code; it now calls
``torchvision.transforms.v2.functional``. ``_reference_preprocess`` below is a verbatim copy of the old
code (kept here as the reference, not used by slas): both must give the same pixels and, through the
tiny HPS and CLIP models, the same scores, in every resize mode (open_clip's "squash" included).
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import transformers
from torch import Tensor

from slas.rewards import build
from slas.rewards.encoders import _hf_preprocess_cfg
from slas.rewards.preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, preprocess_images
from slas.testing.tiny_clip import TINY_OPEN_CLIP_MODEL, save_tiny_hf_clip, save_tiny_open_clip_checkpoint

PROMPTS = ["a red cube on a table", "two blue spheres", "a green cat wearing a hat", "a red cube on a table"]

# --------------------------------------------------------------- the old hand-written implementation

_OLD_MEAN = (0.48145466, 0.4578275, 0.40821073)
_OLD_STD = (0.26862954, 0.26130258, 0.27577711)


def _old_pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = (int(s) for s in size)
    return h, w


def _old_interp(x: Tensor, size: tuple[int, int], interpolation: str) -> Tensor:
    if tuple(x.shape[-2:]) == size:
        return x
    out = F.interpolate(x, size=size, mode=interpolation, align_corners=False, antialias=True)
    return out.clamp_(0.0, 1.0)


def _old_resize(x: Tensor, size: int | Sequence[int], interpolation: str, mode: str) -> Tensor:
    h, w = x.shape[-2:]
    if mode == "squash":
        return _old_interp(x, _old_pair(size), interpolation)
    if not isinstance(size, int):
        size = _old_pair(size)[0]
    short, long = (h, w) if h <= w else (w, h)
    if mode == "shortest":
        new_short, new_long = size, int(size * long / short)
    else:
        new_long, new_short = size, int(size * short / long)
    new = (new_short, new_long) if h <= w else (new_long, new_short)
    return _old_interp(x, new, interpolation)


def _old_center_crop(x: Tensor, size: int | Sequence[int]) -> Tensor:
    ch, cw = _old_pair(size)
    h, w = x.shape[-2:]
    if ch > h or cw > w:
        pad_t, pad_l = max(ch - h, 0) // 2, max(cw - w, 0) // 2
        x = F.pad(x, (pad_l, max(cw - w, 0) - pad_l, pad_t, max(ch - h, 0) - pad_t))
        h, w = x.shape[-2:]
    top, left = round((h - ch) / 2.0), round((w - cw) / 2.0)
    return x[..., top : top + ch, left : left + cw]


def _reference_preprocess(
    images: Tensor, size: int | Sequence[int] = 224, *, crop_size=None, mean=_OLD_MEAN, std=_OLD_STD,
    interpolation: str = "bicubic", resize_mode: str = "shortest", device=None, dtype=torch.float32,
) -> Tensor:
    """The old ``preprocess_images`` for one batch tensor."""
    x = images.to(device=device if device is not None else images.device, dtype=torch.float32)
    x = _old_resize(x, size, interpolation, resize_mode)
    if resize_mode != "squash" or crop_size is not None:
        x = _old_center_crop(x, crop_size if crop_size is not None else size)
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    return ((x - m) / s).to(dtype)


# -------------------------------------------------------------------------------------------- inputs


def _images(n: int, h: int, w: int, seed: int) -> Tensor:
    """Random-ish images in [0, 1]: smooth gradients and a per-image pattern under uniform noise."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    f = 3.0 + 4.0 * torch.arange(n).view(-1, 1, 1)
    pattern = (torch.sin(f * xx) * torch.cos(f * yy) + 1) / 2
    base = torch.stack([xx.expand(n, h, w), yy.expand(n, h, w), pattern], dim=1)
    return (0.8 * base + 0.3 * torch.rand(n, 3, h, w, generator=g)).clamp(0, 1)


SIZES = [(300, 400), (333, 250), (120, 160), (224, 224), (64, 500), (17, 31)]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("tiny_clip")
    return {
        "hps": save_tiny_open_clip_checkpoint(d / "hps", seed=0),
        "open_clip": save_tiny_open_clip_checkpoint(d / "oc" / "weights.bin", seed=1, wrap=False),
        "hf": save_tiny_hf_clip(d / "hf", seed=0),
    }


# ---------------------------------------------------------------------------------------------- tests


def test_openai_mean_std_come_from_transformers_unchanged():
    assert (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD) == (_OLD_MEAN, _OLD_STD)
    assert list(OPENAI_CLIP_MEAN) == list(transformers.image_utils.OPENAI_CLIP_MEAN)


@pytest.mark.parametrize("resize_mode", ["shortest", "longest", "squash"])
@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
@pytest.mark.parametrize("size", [224, (200, 240)])
def test_pixels_equal_the_hand_written_version(resize_mode, interpolation, size):
    for i, (h, w) in enumerate(SIZES):
        x = _images(2, h, w, seed=i)
        kwargs = {"interpolation": interpolation, "resize_mode": resize_mode}
        if resize_mode != "squash" and not isinstance(size, int):
            with pytest.raises(ValueError, match="square target size"):
                preprocess_images(x, size, **kwargs)
            continue
        for crop in (None, 160, (100, 300)):
            new = preprocess_images(x, size, crop_size=crop, **kwargs)
            old = _reference_preprocess(x, size, crop_size=crop, **kwargs)
            assert new.shape == old.shape, (h, w, crop)
            torch.testing.assert_close(new, old, atol=1e-6, rtol=0)


@pytest.mark.parametrize(("name", "options"), [
    ("hpsv21", {}),
    ("clip", {"backend": "transformers"}),
    ("clip", {"backend": "open_clip"}),
    ("clip", {"backend": "open_clip", "preprocess": {"resize_mode": "squash", "interpolation": "bilinear"}}),
    ("image_similarity", {"backend": "open_clip", "preprocess": {"resize_mode": "longest"}}),
])
def test_scores_equal_the_hand_written_version(name, options, files):
    """The same images scored through the tiny models with the old and the new preprocessing."""
    base = {
        "hpsv21": {"checkpoint": str(files["hps"]), "model_name": TINY_OPEN_CLIP_MODEL},
        "transformers": {"model": str(files["hf"])},
        "open_clip": {"model_name": TINY_OPEN_CLIP_MODEL, "pretrained": str(files["open_clip"])},
    }[options.get("backend", name)]
    reward = build({"components": [{"name": name, "options": {**base, **options, "device": "cpu"}}]})
    encoder = reward.components[0][2].encoder
    images = _images(4, 150, 200, seed=7)
    conditions = {"reference_images": _images(4, 90, 70, seed=8)} if name == "image_similarity" else {}

    new = reward(images, PROMPTS, **conditions)[name]
    new_preprocess = encoder.preprocess
    encoder.preprocess = lambda x: _reference_preprocess(
        x, device=encoder.device, dtype=encoder.dtype, **encoder.preprocess_cfg
    )
    try:
        old = reward(images, PROMPTS, **conditions)[name]
    finally:
        encoder.preprocess = new_preprocess
    print(f"{name} {options}: max |new - old| = {(new - old).abs().max():.3g}")
    torch.testing.assert_close(new, old, atol=1e-3, rtol=0)


@pytest.mark.parametrize(("processor", "expected"), [
    (dict(size={"shortest_edge": 64}, crop_size={"height": 60, "width": 64}),
     {"size": 64, "resize_mode": "shortest", "crop_size": (60, 64), "interpolation": "bicubic"}),
    (dict(size={"height": 48, "width": 40}, do_center_crop=False, resample=2, do_normalize=False),
     {"size": (48, 40), "resize_mode": "squash", "interpolation": "bilinear",
      "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}),
])
def test_hf_processor_settings_translate(processor, expected):
    """``size`` / ``crop_size`` read the same from transformers 4's dicts and 5's ``SizeDict``."""
    cfg = _hf_preprocess_cfg(transformers.CLIPImageProcessor(**processor), 224)
    assert {k: cfg[k] for k in expected} == expected
    if "mean" not in expected:
        assert (cfg["mean"], cfg["std"]) == (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
