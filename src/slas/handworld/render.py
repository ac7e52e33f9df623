"""Draw the product-in-hand world with PIL and numpy (no learning): person, product and edit images.

Every image is an ``size`` x ``size`` x 3 uint8 array (what a PNG holds; ``slas.images.to_tensor`` makes
the [3, H, W] float tensor the rest of slas passes). Drawing happens at ``SUPERSAMPLE`` times the size and
is reduced with a box filter, so edges are antialiased like a generated image's; the same person drawn
twice gives the same pixels, so an edit differs from its person only where something was put on it.
"""

from __future__ import annotations

import math
import random
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from slas.handworld.scene import (
    CLOTHING,
    SKIN_TONES,
    EditLayout,
    Hold,
    PersonParams,
    Placement,
    ProductParams,
    correct_layout,
)

SUPERSAMPLE = 4
MARK_INSET = 1.3  # output pixels of body colour kept between a mark and the product's outline
FINGER_INSET = 1.6  # and between the fingers drawn over a held product and its outline


def _background(color, gradient, size: int) -> np.ndarray:
    """A colour with a gentle linear ramp, float HxWx3 in [0, 1]."""
    angle, strength = gradient
    yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1) - 0.5
    ramp = (math.cos(angle) * xx + math.sin(angle) * yy) * strength
    return np.clip(np.asarray(color, np.float32)[None, None] / 255 + ramp[..., None], 0, 1)


def _canvas(color, gradient, size: int) -> Image.Image:
    big = size * SUPERSAMPLE
    base = Image.fromarray((_background(color, gradient, size) * 255).round().astype(np.uint8))
    return base.resize((big, big), Image.Resampling.BILINEAR)


def _line(draw: ImageDraw.ImageDraw, a, b, width: float, fill) -> None:
    """A thick segment with round caps, coordinates in output pixels."""
    s = SUPERSAMPLE
    draw.line([(a[0] * s, a[1] * s), (b[0] * s, b[1] * s)], fill=fill, width=max(1, round(width * s)))
    for x, y in (a, b):
        r = width * s / 2
        draw.ellipse((x * s - r, y * s - r, x * s + r, y * s + r), fill=fill)


def _disc(draw: ImageDraw.ImageDraw, x: float, y: float, r: float, fill) -> None:
    s = SUPERSAMPLE
    draw.ellipse(((x - r) * s, (y - r) * s, (x + r) * s, (y + r) * s), fill=fill)


def draw_hand(draw: ImageDraw.ImageDraw, x: float, y: float, r: float, angle: float, skin) -> None:
    """An open hand: a palm disc, four spread fingers towards ``angle`` and a thumb to one side."""
    _disc(draw, x, y, r, skin)
    for spread in (-0.45, -0.15, 0.15, 0.45):
        a = angle + spread
        _line(draw, (x, y), (x + 2.2 * r * math.cos(a), y + 2.2 * r * math.sin(a)), 0.55 * r, skin)
    a = angle - 1.35
    _line(draw, (x, y), (x + 1.7 * r * math.cos(a), y + 1.7 * r * math.sin(a)), 0.6 * r, skin)


def _draw_person(p: PersonParams) -> Image.Image:
    """The person at supersampled size (a fresh copy: callers draw on it)."""
    return _person_canvas(p).copy()


@lru_cache(maxsize=8)
def _person_canvas(p: PersonParams) -> Image.Image:
    img = _canvas(p.background, p.gradient, p.size)
    draw = ImageDraw.Draw(img)
    s, cloth, skin = SUPERSAMPLE, CLOTHING[p.clothing], SKIN_TONES[p.skin]
    x0, x1 = p.body_x - p.torso_width / 2, p.body_x + p.torso_width / 2
    draw.rounded_rectangle((x0 * s, p.torso_top * s, x1 * s, (p.size + 4) * s), radius=0.25 * p.torso_width * s,
                           fill=cloth)
    other = x0 + p.arm_width / 2 if p.side == "right" else x1 - p.arm_width / 2  # the lowered arm, out of frame
    _line(draw, (other, p.torso_top + p.arm_width / 2), (other - 0.6 * (1 if p.side == "right" else -1), p.size + 4),
          p.arm_width, cloth)
    head_y = p.torso_top - p.head_r - 0.04 * p.size
    nw = 0.45 * p.head_r
    draw.rectangle(((p.body_x - nw / 2) * s, (head_y + 0.5 * p.head_r) * s, (p.body_x + nw / 2) * s,
                    (p.torso_top + 1) * s), fill=skin)
    _disc(draw, p.body_x, head_y, p.head_r, skin)
    _line(draw, p.shoulder, p.wrist, p.arm_width, cloth)
    draw_hand(draw, p.hand_x, p.hand_y, p.hand_r, p.hand_angle, skin)
    return img


def _unit_silhouette(draw: ImageDraw.ImageDraw, kind: str, aspect: float, box) -> tuple[float, float, float, float]:
    """Fill ``kind``'s outline into ``box`` (big pixels) with 255; return its body box (where marks go)."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0

    def pt(u, v):
        return (x0 + u * w, y0 + v * h)

    if kind == "box":
        draw.rectangle(box, fill=255)
        return box
    if kind == "bottle":
        draw.polygon([pt(0.29, 0), pt(0.71, 0), pt(0.71, 0.2), pt(1, 0.34), pt(1, 1), pt(0, 1), pt(0, 0.34),
                      pt(0.29, 0.2)], fill=255)
        return (*pt(0, 0.34), *pt(1, 1))
    if kind == "can":
        e = min(0.3 / aspect, 0.3)
        draw.rectangle((*pt(0, e), *pt(1, 1 - e)), fill=255)
        draw.ellipse((*pt(0, 0), *pt(1, 2 * e)), fill=255)
        draw.ellipse((*pt(0, 1 - 2 * e), *pt(1, 1)), fill=255)
        return box
    if kind == "bag":
        draw.ellipse((*pt(0.26, 0), *pt(0.74, 0.62)), fill=255)
        draw.polygon([pt(0.12, 0.3), pt(0.88, 0.3), pt(1, 1), pt(0, 1)], fill=255)
        return (*pt(0.12, 0.3), *pt(0.88, 1))
    if kind == "phone":
        draw.rounded_rectangle(box, radius=0.2 * w, fill=255)
        return box
    raise ValueError(f"unknown product kind {kind!r}")


def _pattern(draw: ImageDraw.ImageDraw, pattern: str, body) -> None:
    x0, y0, x1, y1 = body
    w, h = x1 - x0, y1 - y0
    if pattern == "stripe":
        draw.rectangle((x0 + 0.32 * w, y0, x0 + 0.68 * w, y1), fill=255)
    elif pattern == "band":
        draw.rectangle((x0, y0 + 0.38 * h, x1, y0 + 0.62 * h), fill=255)
    elif pattern == "base":
        draw.rectangle((x0, y0 + 0.64 * h, x1, y1), fill=255)
    elif pattern == "cap":
        draw.rectangle((x0, y0, x1, y0 + 0.36 * h), fill=255)
    else:
        raise ValueError(f"unknown pattern {pattern!r}")


def _disk(radius: int) -> np.ndarray:
    yy, xx = np.mgrid[-radius:radius + 1, -radius:radius + 1]
    return xx * xx + yy * yy <= radius * radius


def product_masks(product: ProductParams, box, big: int,
                  inset: float = MARK_INSET) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(silhouette, mark, inner) boolean masks at ``big`` px for ``product`` in ``box`` (output px); ``inner``
    is the silhouette less an ``inset`` rim (output px); marks stay inside :data:`MARK_INSET`."""
    s = SUPERSAMPLE
    big_box = tuple(v * s for v in box)
    sil_img = Image.new("L", (big, big), 0)
    body = _unit_silhouette(ImageDraw.Draw(sil_img), product.kind, product.aspect, big_box)
    pat_img = Image.new("L", (big, big), 0)
    _pattern(ImageDraw.Draw(pat_img), product.pattern, body)
    sil = np.asarray(sil_img) > 127
    return sil, _inset(sil, big_box, MARK_INSET) & (np.asarray(pat_img) > 127), _inset(sil, big_box, inset)


def _inset(sil: np.ndarray, big_box, pixels: float) -> np.ndarray:
    """``sil`` less a rim ``pixels`` (output px) wide, eroding only the product's window (the rest is empty)."""
    inner = np.zeros_like(sil)
    r = max(1, round(pixels * SUPERSAMPLE))
    big = sil.shape[0]
    y0, x0 = (max(0, math.floor(v) - r - 1) for v in (big_box[1], big_box[0]))
    y1, x1 = (min(big, math.ceil(v) + r + 2) for v in (big_box[3], big_box[2]))
    if y1 > y0 and x1 > x0:
        inner[y0:y1, x0:x1] = ndimage.binary_erosion(sil[y0:y1, x0:x1], _disk(r), border_value=0)
    return inner


def _fingers(placement: Placement, side: str, big: int) -> np.ndarray:
    """Three finger bands across the product from the side away from the body, inside its inset rim."""
    x0, y0, x1, y1 = placement.box
    w, h = x1 - x0, y1 - y0
    img = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(img)
    t = max(1.3, 0.1 * h)
    for k in range(3):
        cy = y0 + h * 0.42 + k * (t + max(0.5, 0.04 * h))
        a, b = (x1 - 0.5, x1 - 0.36 * w) if side == "right" else (x0 + 0.5, x0 + 0.36 * w)
        _line(draw, (a, cy), (b, cy), t, 255)
    return np.asarray(img) > 127


def _paint(arr: np.ndarray, mask: np.ndarray, color) -> None:
    """Set ``mask``'s pixels to ``color``, touching only the mask's bounding window (it is small)."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if len(rows):
        win = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
        arr[win][mask[win]] = color


def render_layout(layout: EditLayout) -> np.ndarray:
    """The edit image ``layout`` describes: the person, then each product, fingers, an extra hand."""
    p = layout.person
    img = _draw_person(p)
    big = p.size * SUPERSAMPLE
    if layout.extra_hand is not None:
        x, y, r, a = layout.extra_hand
        draw_hand(ImageDraw.Draw(img), x, y, r, a, SKIN_TONES[p.skin])
    arr = np.array(img)
    for pl in layout.placements:
        sil, mark, inner = product_masks(pl.product, pl.box, big, FINGER_INSET)
        _paint(arr, sil, pl.product.rgb)
        _paint(arr, mark, pl.product.mark_rgb)
        if pl.fingers:
            _paint(arr, _fingers(pl, p.side, big) & inner, SKIN_TONES[p.skin])
    return _reduce(arr, p.size)


def _reduce(arr: np.ndarray, size: int) -> np.ndarray:
    return np.asarray(Image.fromarray(arr).resize((size, size), Image.Resampling.BOX))


def render_person(params: PersonParams) -> np.ndarray:
    """The person image: uint8 ``size`` x ``size`` x 3."""
    return _reduce(np.asarray(_draw_person(params)), params.size)


def render_product(params: ProductParams, fill: float = 0.7) -> np.ndarray:
    """The product photo: the product centred on its plain background, its long side ``fill`` of the frame."""
    size = params.size
    w, h = params.extent(fill * size)
    box = ((size - w) / 2, (size - h) / 2, (size + w) / 2, (size + h) / 2)
    big = size * SUPERSAMPLE
    arr = np.empty((big, big, 3), np.uint8)
    arr[:] = params.background
    sil, mark, _ = product_masks(params, box, big)
    _paint(arr, sil, params.rgb)
    _paint(arr, mark, params.mark_rgb)
    return _reduce(arr, size)


def edit_layout(person: PersonParams, product: ProductParams, hold: Hold | None = None,
                failure: str | None = None, seed: int = 0) -> EditLayout:
    """The parameters of the edit ``render_edit`` draws: correct, or with the single ``failure`` (a name in
    :data:`slas.handworld.corrupt.FAILURES`, its random choices drawn from ``seed``)."""
    if failure is None:
        return correct_layout(person, product, hold)
    from slas.handworld.corrupt import failure_layout

    return failure_layout(person, product, hold or Hold(), failure, random.Random(seed))


def render_edit(person: PersonParams, product: ProductParams, hold: Hold | None = None,
                failure: str | None = None, seed: int = 0) -> np.ndarray:
    """The edited image: the person holding the product (or the edit with one ``failure``); uint8 HxWx3."""
    return render_layout(edit_layout(person, product, hold, failure, seed))
