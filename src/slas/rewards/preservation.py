"""Person preservation (``"person_preservation"``): is the person of the input still the person of the edit?

A product-in-hand edit should change the hand and the product and nothing else. An editing policy trained
only on MLLM judges (presence, similarity, interaction) can find that repainting the person (a new face,
new clothes, a new pose, a shifted framing) pleases the judge; this reward catches it. It compares each
edit with its input person image (condition ``person_images``; a ``[N, 3, H, W]`` tensor in [0, 1] or a
list of ``N`` PIL images, ``[3, H, W]`` tensors or paths, any size: each is resized to its edit's size)
OUTSIDE the product region, where the two should agree:

* ``mode: diff`` (default): the product region is where edit and person differ strongly (the local mean
  of the per-pixel absolute difference above ``diff_threshold``), dilated by the similarity window so
  its border does not count. It may cover at most ``max_region`` of the image: when more differs, only
  the ``max_region`` most-changed pixels are excused, so a repainted person cannot pass as "a large
  product" (the rest of the changed image still counts against the edit);
* ``mode: box``: the product region is a fixed box ``[x0, y0, x1, y1]`` in fractions of the width and
  height (default the centre half), for a layout where the hand is known to be;
* ``mode: whole_image``: no region is excused (the whole image must stay the same).

``metric: ssim`` (default) is the mean structural similarity (Wang et al. 2004: Gaussian window of 11
px, sigma 1.5, ``C1 = 0.01^2``, ``C2 = 0.03^2``, per RGB channel, clamped at 0) over the kept pixels;
``metric: l1`` is ``max(0, 1 - mean |edit - person| / l1_scale)`` over them (``l1_scale`` default 0.25,
about the mean difference of two unrelated photos, so the score spans [0, 1] rather than crowding near 1).
Both are in [0, 1], 1 for an untouched person.
Both images are compared at ``resolution`` pixels on the long side (default 256; smaller edits are
compared at their own size). Pure torch, no weights; key ``"person_preservation"``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from slas.preflight import PreflightError
from slas.rewards.options import checked_factory, condition_images
from slas.rewards.registry import register

__all__ = ["PERSON_CONDITION", "PersonPreservationReward", "preservation_score", "product_region", "ssim_map"]

PERSON_CONDITION = "person_images"
MODES = ("diff", "box", "whole_image")
METRICS = ("ssim", "l1")
WINDOW, SIGMA = 11, 1.5
C1, C2 = 0.01**2, 0.03**2


def _gaussian_window(channels: int, device: torch.device) -> Tensor:
    """The SSIM window as a depthwise conv kernel ``[channels, 1, WINDOW, WINDOW]`` (sums to 1)."""
    x = torch.arange(WINDOW, dtype=torch.float32, device=device) - WINDOW // 2
    g = torch.exp(-(x**2) / (2 * SIGMA**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(channels, 1, WINDOW, WINDOW).contiguous()


def _local_mean(x: Tensor) -> Tensor:
    """Gaussian-weighted local mean of ``[N, C, H, W]``, same size (reflect padding: no dark border)."""
    pad = WINDOW // 2
    mode = "reflect" if min(x.shape[-2:]) > pad else "replicate"
    return F.conv2d(F.pad(x, (pad, pad, pad, pad), mode=mode), _gaussian_window(x.shape[1], x.device), groups=x.shape[1])


def ssim_map(a: Tensor, b: Tensor) -> Tensor:
    """Per-pixel SSIM of ``[N, 3, H, W]`` images in [0, 1], averaged over channels and clamped at 0: ``[N, H, W]``."""
    mu_a, mu_b = _local_mean(a), _local_mean(b)
    var_a = _local_mean(a * a) - mu_a**2
    var_b = _local_mean(b * b) - mu_b**2
    cov = _local_mean(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + C1) * (2 * cov + C2)) / ((mu_a**2 + mu_b**2 + C1) * (var_a + var_b + C2))
    return s.clamp(0, 1).mean(1)


def product_region(
    edits: Tensor, persons: Tensor, *, mode: str = "diff", box: Sequence[float] = (0.25, 0.25, 0.75, 0.75),
    diff_threshold: float = 0.15, max_region: float = 0.4,
) -> Tensor:
    """The boolean ``[N, H, W]`` region that is excused from the comparison (the product and the hand).

    ``diff``: strongly changed pixels, dilated by half the SSIM window, capped at the ``max_region`` most
    changed ones (see the module docstring); ``box``: the box; ``whole_image``: nothing.
    """
    n, _, h, w = edits.shape
    if mode == "whole_image":
        return torch.zeros(n, h, w, dtype=torch.bool, device=edits.device)
    if mode == "box":
        x0, y0, x1, y1 = box
        region = torch.zeros(n, h, w, dtype=torch.bool, device=edits.device)
        region[:, round(y0 * h) : round(y1 * h), round(x0 * w) : round(x1 * w)] = True
        return region
    change = _local_mean((edits - persons).abs().mean(1, keepdim=True))  # [N, 1, H, W]
    pad = WINDOW // 2
    region = F.max_pool2d((change > diff_threshold).float(), 2 * pad + 1, stride=1, padding=pad) > 0
    region = region[:, 0]
    too_big = region.flatten(1).float().mean(1) > max_region
    if too_big.any():
        flat = change[:, 0].flatten(1)
        keep = max(1, int(max_region * h * w))
        cut = flat.topk(keep, dim=1).values[:, -1]  # the max_region most-changed pixels of each image
        capped = change[:, 0] >= cut[:, None, None]
        region = torch.where(too_big[:, None, None], capped, region)
    return region


def preservation_score(
    edits: Tensor, persons: Tensor, *, mode: str = "diff", metric: str = "ssim",
    box: Sequence[float] = (0.25, 0.25, 0.75, 0.75), diff_threshold: float = 0.15, max_region: float = 0.4,
    l1_scale: float = 0.25,
) -> Tensor:
    """Similarity in [0, 1] of each edit to its person outside the product region (``[N]``); same-size inputs."""
    region = product_region(edits, persons, mode=mode, box=box, diff_threshold=diff_threshold, max_region=max_region)
    keep = (~region).float()
    if metric == "l1":
        err = ((edits - persons).abs().mean(1) * keep).flatten(1).sum(1) / keep.flatten(1).sum(1).clamp_min(1)
        return (1 - err / l1_scale).clamp_min(0)
    sim = ssim_map(edits, persons)
    return (sim * keep).flatten(1).sum(1) / keep.flatten(1).sum(1).clamp_min(1)


def _working_size(h: int, w: int, resolution: int) -> tuple[int, int]:
    """``(h, w)`` scaled down so the long side is at most ``resolution`` (never up)."""
    scale = min(1.0, resolution / max(h, w))
    return max(1, round(h * scale)), max(1, round(w * scale))


def _resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    """``[N, 3, H, W]`` resized to ``size`` (antialiased bilinear; untouched when already that size)."""
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)


class PersonPreservationReward:
    """Similarity of each edit to its person image outside the product region (key ``"person_preservation"``)."""

    key = "person_preservation"

    def __init__(
        self,
        mode: str = "diff",
        metric: str = "ssim",
        box: Sequence[float] = (0.25, 0.25, 0.75, 0.75),
        diff_threshold: float = 0.15,
        max_region: float = 0.4,
        l1_scale: float = 0.25,
        resolution: int = 256,
        condition: str = PERSON_CONDITION,
    ) -> None:
        _check_preservation(mode=mode, metric=metric, box=box, diff_threshold=diff_threshold, max_region=max_region,
                            l1_scale=l1_scale, resolution=resolution, condition=condition)
        self.options = {"mode": mode, "metric": metric, "box": tuple(float(v) for v in box),
                        "diff_threshold": float(diff_threshold), "max_region": float(max_region),
                        "l1_scale": float(l1_scale)}
        self.resolution = resolution
        self.condition = condition

    def __call__(self, images: Tensor, prompts: list[str], **conditions: Any) -> dict[str, Tensor]:
        loaded = condition_images(conditions, self.condition, images.shape[0], reward="person_preservation",
                                  what="the input person images")
        edits = images.float()
        size = _working_size(*edits.shape[-2:], self.resolution)
        edits = _resize(edits, size)
        persons_t = torch.stack([_resize(p[None].float(), size)[0] for p in loaded]).to(edits.device)
        return {self.key: preservation_score(edits, persons_t, **self.options).cpu()}


def _check_preservation(
    *, mode: Any, metric: Any, box: Any, diff_threshold: Any, max_region: Any, l1_scale: Any, resolution: Any,
    condition: Any,
) -> None:
    """The options of ``person_preservation`` (one-line :class:`PreflightError` naming the option)."""
    def bad(option: str, why: str) -> PreflightError:
        return PreflightError(f"reward person_preservation options.{option}: {why}")

    if mode not in MODES:
        raise bad("mode", f"must be one of {list(MODES)}, got {mode!r}")
    if metric not in METRICS:
        raise bad("metric", f"must be one of {list(METRICS)}, got {metric!r}")
    numbers = isinstance(box, (list, tuple)) and len(box) == 4 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in box)
    if not numbers or not (0 <= box[0] < box[2] <= 1 and 0 <= box[1] < box[3] <= 1):
        raise bad("box", f"must be [x0, y0, x1, y1] fractions with 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1, got {box!r}")
    if (box[2] - box[0]) * (box[3] - box[1]) >= 1:
        raise bad("box", "covers the whole image: nothing would be compared (use a smaller box)")
    if not isinstance(diff_threshold, (int, float)) or isinstance(diff_threshold, bool) or not 0 < diff_threshold < 1:
        raise bad("diff_threshold", f"must be a number in (0, 1) (mean absolute difference), got {diff_threshold!r}")
    if not isinstance(max_region, (int, float)) or isinstance(max_region, bool) or not 0 < max_region < 1:
        raise bad("max_region", f"must be a fraction in (0, 1), got {max_region!r}")
    if not isinstance(l1_scale, (int, float)) or isinstance(l1_scale, bool) or not 0 < l1_scale <= 1:
        raise bad("l1_scale", f"must be a number in (0, 1] (the error that scores 0), got {l1_scale!r}")
    if not isinstance(resolution, int) or isinstance(resolution, bool) or resolution < WINDOW:
        raise bad("resolution", f"must be an integer >= {WINDOW} (pixels on the long side), got {resolution!r}")
    if not isinstance(condition, str) or not condition:
        raise bad("condition", f"must be a condition name, got {condition!r}")


_factory, _preflight = checked_factory("person_preservation", PersonPreservationReward, _check_preservation)
register("person_preservation", preflight=_preflight)(_factory)
