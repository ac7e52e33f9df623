"""Render shapes-world scenes with PIL: correct by construction for a GenEval-schema record.

Objects never overlap; sizes, positions, colour shades and backgrounds (low-saturation, some with a
gradient) vary. Drawing happens at ``supersample`` times the size and is downscaled with a box filter,
so edges are antialiased like a generated image's.
"""

from __future__ import annotations

import colorsys
import math
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from slas.shapes.prompts import COLORS, SHAPES


@dataclass(frozen=True)
class PlacedObject:
    shape: str
    color: str
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in output pixels


def shape_polygon(shape: str, box: tuple[float, float, float, float]) -> list[tuple[float, float]] | None:
    """Polygon of ``shape`` filling ``box`` (None for the circle, drawn as an ellipse)."""
    x0, y0, x1, y1 = box
    cx, w, h = (x0 + x1) / 2, x1 - x0, y1 - y0
    if shape == "circle":
        return None
    if shape == "square":
        return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
    if shape == "triangle":
        return [(cx, y0), (x1, y1), (x0, y1)]
    if shape == "star":  # five points, inner radius 0.5, scaled to fill the box exactly
        pts = [
            ((0.5 if k % 2 == 0 else 0.25) * math.cos(-math.pi / 2 + k * math.pi / 5),
             (0.5 if k % 2 == 0 else 0.25) * math.sin(-math.pi / 2 + k * math.pi / 5))
            for k in range(10)
        ]
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        sx, sy = w / (max(xs) - min(xs)), h / (max(ys) - min(ys))
        return [(x0 + (px - min(xs)) * sx, y0 + (py - min(ys)) * sy) for px, py in pts]
    raise ValueError(f"unknown shape {shape!r}; known: {SHAPES}")


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, box, fill) -> None:
    poly = shape_polygon(shape, box)
    if poly is None:
        draw.ellipse(box, fill=fill)
    else:
        draw.polygon(poly, fill=fill)


def shape_mask(shape: str, width: int, height: int, supersample: int = 8) -> np.ndarray:
    """Boolean mask of ``shape`` filling a width x height box (the detector's templates)."""
    img = Image.new("L", (width * supersample, height * supersample), 0)
    draw_shape(ImageDraw.Draw(img), shape, (0, 0, width * supersample - 1, height * supersample - 1), 255)
    small = img.resize((width, height), Image.Resampling.BOX)
    return np.asarray(small) >= 128


def _background(rng: random.Random, size: int) -> np.ndarray:
    h, s, v = rng.random(), rng.uniform(0.0, 0.12), rng.uniform(0.15, 0.95)
    base = np.array(colorsys.hsv_to_rgb(h, s, v), dtype=np.float32)
    img = np.broadcast_to(base, (size, size, 3)).copy()
    if rng.random() < 0.5:  # a gentle linear gradient
        angle = rng.uniform(0, 2 * math.pi)
        yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1) - 0.5
        ramp = (np.cos(angle) * xx + np.sin(angle) * yy) * rng.uniform(0.05, 0.2)
        img = img + ramp[..., None]
    return np.clip(img, 0, 1)


def _shade(color: str, rng: random.Random) -> tuple[int, int, int]:
    return tuple(int(min(255, max(0, c + rng.randint(-12, 12)))) for c in COLORS[color])


def _overlaps(box, boxes, gap: float) -> bool:
    x0, y0, x1, y1 = box
    return any(x0 < b[2] + gap and b[0] < x1 + gap and y0 < b[3] + gap and b[1] < y1 + gap for b in boxes)


_HALVES = {"left of": (0, 0, 0.5, 1), "right of": (0.5, 0, 1, 1), "above": (0, 0, 1, 0.5), "below": (0, 0.5, 1, 1)}
_OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


def _random_box(rng: random.Random, size: int, d: float, region) -> tuple[float, float, float, float]:
    rx0, ry0, rx1, ry1 = (v * size for v in region)
    x = rng.uniform(rx0 + 1, max(rx0 + 1, rx1 - d - 1))
    y = rng.uniform(ry0 + 1, max(ry0 + 1, ry1 - d - 1))
    return (x, y, x + d, y + d)


def _aligned(box, anchor, rel: str) -> bool:
    """``box`` is clearly ``rel`` the anchor: far along the relation's axis, close across it."""
    (cx, cy), (ax, ay) = (((b[0] + b[2]) / 2, (b[1] + b[3]) / 2) for b in (box, anchor))
    along, across = (cx - ax, cy - ay) if rel in ("left of", "right of") else (cy - ay, cx - ax)
    span = (box[2] - box[0] + anchor[2] - anchor[0]) / 2
    return abs(across) <= 0.35 * abs(along) and abs(along) >= span


def layout(record: dict, rng: random.Random, size: int = 32) -> list[PlacedObject]:
    """Objects (shape, colour, box) that make ``record`` true, without overlaps."""
    reqs = record["include"]
    rel = reqs[1]["position"][0] if len(reqs) > 1 and "position" in reqs[1] else None
    regions = [(0, 0, 1, 1)] * len(reqs)
    if rel is not None:  # the anchor in one half, the other object in the opposite half
        regions = [_HALVES[_OPPOSITE[rel]], _HALVES[rel], *regions[2:]]
    lo, hi = (0.34, 0.45) if sum(r["count"] for r in reqs) <= 2 else (0.28, 0.34)
    for _ in range(200):
        objects: list[PlacedObject] = []
        for i, req in enumerate(reqs):
            for _ in range(req["count"]):
                d = rng.uniform(lo, hi) * size
                for _ in range(50):
                    box = _random_box(rng, size, d, regions[i])
                    if rel is not None and i == 1 and not _aligned(box, objects[0].box, rel):
                        continue
                    if not _overlaps(box, [o.box for o in objects], gap=2.0):
                        objects.append(PlacedObject(req["class"], req.get("color") or rng.choice(list(COLORS)), box))
                        break
        if len(objects) == sum(r["count"] for r in reqs):
            return objects
    raise RuntimeError(f"could not lay out {record['prompt']!r} in {size}px")


def render(objects: list[PlacedObject], rng: random.Random, size: int = 32, supersample: int = 4) -> Image.Image:
    """Draw ``objects`` on a random low-saturation background."""
    big = size * supersample
    bg = Image.fromarray((_background(rng, size) * 255).astype(np.uint8)).resize((big, big), Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(bg)
    for obj in objects:
        box = tuple(v * supersample for v in obj.box)
        draw_shape(draw, obj.shape, box, _shade(obj.color, rng))
    return bg.resize((size, size), Image.Resampling.BOX)


def render_record(record: dict, rng: random.Random, size: int = 32) -> tuple[Image.Image, list[PlacedObject]]:
    """A correct scene for ``record`` and what it contains."""
    objects = layout(record, rng, size)
    return render(objects, rng, size), objects
