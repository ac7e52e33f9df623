"""The shapes-world detector: colour segmentation, connected components and shape templates.

Backgrounds are low-saturation and objects are saturated palette colours, so a pixel belongs to an
object when its saturation and value are high; its colour is the nearest palette hue. Each connected
component of one colour is an object, classified by the best IoU against the shape templates drawn
at the component's box size.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image

from slas.images import rgb_to_hsv
from slas.shapes.prompts import COLORS, SHAPES
from slas.shapes.render import shape_mask

MIN_SATURATION = 0.25
MIN_VALUE = 0.3
MIN_AREA = 8
MIN_SIDE = 4  # antialiased edge slivers of another hue are thin
MIN_TEMPLATE_IOU = 0.5
_PALETTE_HUES = np.array([colorsys.rgb_to_hsv(*(c / 255 for c in rgb))[0] for rgb in COLORS.values()])
_COLOR_NAMES = list(COLORS)


@dataclass(frozen=True)
class Detection:
    shape: str
    color: str
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive), pixels
    area: int
    iou: float


def _to_array(image) -> np.ndarray:
    """HxWx3 float in [0, 1] from a PIL image, a uint8 array or a [3, H, W] tensor in [0, 1]."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    arr = np.asarray(image.detach().cpu() if hasattr(image, "detach") else image)
    if arr.ndim == 3 and arr.shape[0] == 3 and arr.shape[-1] != 3:
        arr = arr.transpose(1, 2, 0)
    arr = arr.astype(np.float32)
    return arr / 255.0 if arr.max() > 1.0 else arr


def _components(mask: np.ndarray) -> list[np.ndarray]:
    """4-connected components of a boolean mask, as index arrays."""
    seen = np.zeros_like(mask, dtype=bool)
    h, w = mask.shape
    comps = []
    for y0, x0 in zip(*np.nonzero(mask), strict=True):
        if seen[y0, x0]:
            continue
        stack, pix = [(y0, x0)], []
        seen[y0, x0] = True
        while stack:
            y, x = stack.pop()
            pix.append((y, x))
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    stack.append((ny, nx))
        comps.append(np.array(pix))
    return comps


@lru_cache(maxsize=4096)
def _template(shape: str, w: int, h: int) -> np.ndarray:
    return shape_mask(shape, w, h)


def detect(image) -> list[Detection]:
    """Objects in one image, largest first."""
    arr = _to_array(image)
    hue, sat, val = rgb_to_hsv(arr)
    fg = (sat >= MIN_SATURATION) & (val >= MIN_VALUE)
    dist = np.abs(hue[..., None] - _PALETTE_HUES)
    label = np.minimum(dist, 1 - dist).argmin(-1)
    found = []
    for ci, color in enumerate(_COLOR_NAMES):
        for pix in _components(fg & (label == ci)):
            if len(pix) < MIN_AREA:
                continue
            y0, x0 = pix.min(0)
            y1, x1 = pix.max(0) + 1
            if min(y1 - y0, x1 - x0) < MIN_SIDE:
                continue
            comp = np.zeros((y1 - y0, x1 - x0), dtype=bool)
            comp[pix[:, 0] - y0, pix[:, 1] - x0] = True
            best, best_iou = None, 0.0
            for shape in SHAPES:
                t = _template(shape, int(x1 - x0), int(y1 - y0))
                iou = float((t & comp).sum() / max((t | comp).sum(), 1))
                if iou > best_iou:
                    best, best_iou = shape, iou
            if best is not None and best_iou >= MIN_TEMPLATE_IOU:
                found.append(Detection(best, color, (int(x0), int(y0), int(x1), int(y1)), len(pix), best_iou))
    return sorted(found, key=lambda d: -d.area)
