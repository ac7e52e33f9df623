"""Scene parameters of the product-in-hand world, as frozen dataclasses sampled from a seeded generator.

A scene is a person (a simple figure whose raised arm ends in an open hand), a product (a shape of one kind
with a body colour, a mark pattern and an aspect ratio) and a hold (how big, relative to the hand, and where
on the palm the product sits in the target edit). Everything is in output pixels of a ``size`` x ``size``
image; drawing (:mod:`slas.handworld.render`) is deterministic in these parameters alone.

Why 64 px: the product in the hand must show its silhouette (a bottle's neck, a bag's handle), a mark
pattern and fingers over it. At 64 px a held product is 13-19 px on its long side, a mark 3-6 px and a finger
~1.5 px; at 48 px these shrink to 10-14 px, 2-4 px and ~1 px, below what survives a blur or JPEG and what a
tiny edit model can be expected to draw. 64 is also the editing data's default shortest side
(``slas.config.DEFAULT_MIN_IMAGE_SIZE``) and a multiple of 16, which both edit pipelines' VAEs and patching
need (8 x 8 latents). Every function takes ``size``; the judge's thresholds scale with it. Measured with
the same judge at 48 px (300 fresh scenes, seed 99): 96.7% of correct edits pass (64 px: 99.2%), 85.7%
after a 0.6 px blur (64 px: 97.3%), and 1.7% of wrong-pattern edits slip through (64 px: 0.3%).

The palettes are chosen so the judge can tell parts apart by colour: backgrounds are low-saturation, skin
is a moderately saturated orange hue, clothing is dark or grey and never skin-like, products are saturated
and at least ~70 (RGB distance) from every clothing colour, skin tone and each other.
"""

from __future__ import annotations

import colorsys
import math
import random
from dataclasses import dataclass

SIZE = 64

Color = tuple[int, int, int]

SKIN_TONES: dict[str, Color] = {
    "light": (241, 200, 165), "fair": (224, 172, 130), "medium": (190, 135, 95),
    "tan": (150, 100, 70), "dark": (110, 72, 50),
}
CLOTHING: dict[str, Color] = {
    "navy": (35, 45, 95), "slate": (85, 105, 130), "forest": (35, 85, 60), "teal": (30, 110, 115),
    "plum": (95, 70, 120), "charcoal": (60, 60, 65), "silver": (185, 185, 190),
}
PRODUCT_COLORS: dict[str, Color] = {
    "red": (210, 30, 45), "orange": (245, 120, 15), "yellow": (235, 210, 40), "green": (40, 165, 70),
    "blue": (35, 90, 215), "purple": (130, 50, 185), "pink": (235, 85, 170),
}
MARK_COLORS: dict[str, Color] = {"white": (245, 245, 245), "black": (25, 25, 30)}
KINDS = ("box", "bottle", "can", "bag", "phone")
ASPECTS: dict[str, tuple[float, float]] = {  # height / width ranges, kept apart where silhouettes are alike
    "box": (0.70, 1.05), "bag": (0.95, 1.25), "can": (1.30, 1.55), "phone": (1.85, 2.20), "bottle": (1.80, 2.30),
}
PATTERNS = ("stripe", "band", "base", "cap")
"""Mark patterns inside the product's body: a vertical centre stripe, a horizontal middle band, a bottom
band and a top band (laid out so no two share most of their area; a centred disc logo was tried and was
too often confused with the stripe and the top band at held size). Each leaves the body's outline in the
body colour (marks are inset)."""

HOLD_RATIO = (4.0, 4.8)
"""The product's long side in the correct edit, in palm radii: a hand-sized product."""


def luminance(rgb: Color) -> float:
    r, g, b = (c / 255 for c in rgb)
    return 0.299 * r + 0.587 * g + 0.114 * b


def mark_for(color: Color) -> str:
    """The mark colour that contrasts with a body colour: black on light bodies, white on dark ones."""
    return "black" if luminance(color) > 0.55 else "white"


@dataclass(frozen=True)
class PersonParams:
    """A figure on a low-saturation background; the arm on ``side`` is raised and ends in an open hand."""

    size: int
    background: Color
    gradient: tuple[float, float]  # (angle in radians, strength in [0, 0.2]) of a linear ramp
    skin: str
    clothing: str
    body_x: float  # torso centre x
    torso_top: float  # shoulder line y
    torso_width: float
    head_r: float
    side: str  # "left" | "right": the hand's side of the torso (image coordinates)
    hand_x: float  # palm centre
    hand_y: float
    hand_r: float  # palm radius
    hand_angle: float  # direction the fingers point, radians (0 = image right, -pi/2 = up)

    @property
    def shoulder(self) -> tuple[float, float]:
        sign = 1 if self.side == "right" else -1
        return self.body_x + sign * (self.torso_width / 2 - self.arm_width / 2), self.torso_top + self.arm_width / 2

    @property
    def arm_width(self) -> float:
        return max(2.5, 1.3 * self.hand_r)

    @property
    def wrist(self) -> tuple[float, float]:
        return (self.hand_x - 0.9 * self.hand_r * math.cos(self.hand_angle),
                self.hand_y - 0.9 * self.hand_r * math.sin(self.hand_angle))


@dataclass(frozen=True)
class ProductParams:
    """A product photo: one ``kind`` with a body ``color``, a ``pattern`` in ``mark`` colour and ``aspect``
    = height / width, centred on a plain background."""

    size: int
    kind: str
    color: str
    pattern: str
    mark: str
    aspect: float
    background: Color

    @property
    def rgb(self) -> Color:
        return PRODUCT_COLORS[self.color]

    @property
    def mark_rgb(self) -> Color:
        return MARK_COLORS[self.mark]

    def extent(self, long_side: float) -> tuple[float, float]:
        """(width, height) of the product drawn with ``long_side`` as its longer side."""
        if self.aspect >= 1:
            return long_side / self.aspect, long_side
        return long_side, long_side * self.aspect


@dataclass(frozen=True)
class Hold:
    """How the target edit places the product: long side = ``ratio`` palm radii, centre = palm + offset."""

    ratio: float = 4.2
    dx: float = 0.0  # in palm radii
    dy: float = 0.0


@dataclass(frozen=True)
class Scene:
    person: PersonParams
    product: ProductParams
    hold: Hold


def _hsv_rgb(h: float, s: float, v: float) -> Color:
    return tuple(round(c * 255) for c in colorsys.hsv_to_rgb(h, s, v))


def sample_person(rng: random.Random, size: int = SIZE) -> PersonParams:
    """A person with the hand clear of the head (so head and hand are separate skin regions)."""
    k = size / 64
    for _ in range(1000):
        body_x = rng.uniform(0.40, 0.60) * size
        torso_top = rng.uniform(0.40, 0.47) * size
        torso_w = rng.uniform(0.28, 0.36) * size
        head_r = rng.uniform(5.6, 7.2) * k
        side = rng.choice(("left", "right"))
        sign = 1 if side == "right" else -1
        hand_r = rng.uniform(3.2, 4.0) * k
        hand_x = body_x + sign * (torso_w / 2 + rng.uniform(0.08, 0.20) * size)
        hand_y = torso_top + rng.uniform(-0.10, 0.25) * size
        up = rng.uniform(-80, 15) * math.pi / 180  # fingers outward and up
        angle = up if side == "right" else math.pi - up
        head_y = torso_top - head_r - 1.0 * k
        reach = 2.9 * hand_r
        if math.hypot(hand_x - body_x, hand_y - head_y) < head_r + reach + 2 * k:
            continue
        if not (reach + 1 <= hand_x <= size - reach - 1 and reach + 1 <= hand_y <= size - reach - 1):
            continue
        bg = _hsv_rgb(rng.random(), rng.uniform(0.0, 0.12), rng.uniform(0.35, 0.85))
        return PersonParams(size, bg, (rng.uniform(0, 2 * math.pi), rng.uniform(0.0, 0.15)),
                            rng.choice(list(SKIN_TONES)), rng.choice(list(CLOTHING)), body_x, torso_top, torso_w,
                            head_r, side, hand_x, hand_y, hand_r, angle)
    raise RuntimeError("could not place a person")  # pragma: no cover - the ranges always allow one


def sample_product(rng: random.Random, size: int = SIZE, kind: str | None = None) -> ProductParams:
    kind = kind or rng.choice(KINDS)
    color = rng.choice(list(PRODUCT_COLORS))
    bg = _hsv_rgb(rng.random(), rng.uniform(0.0, 0.08), rng.uniform(0.55, 0.75))  # apart from white and black marks
    return ProductParams(size, kind, color, rng.choice(PATTERNS), mark_for(PRODUCT_COLORS[color]),
                         round(rng.uniform(*ASPECTS[kind]), 3), bg)


def sample_hold(rng: random.Random) -> Hold:
    return Hold(rng.uniform(*HOLD_RATIO), rng.uniform(-0.3, 0.3), rng.uniform(-0.3, 0.3))


def product_box(person: PersonParams, product: ProductParams, hold: Hold,
                scale: float = 1.0, center: tuple[float, float] | None = None) -> tuple[float, float, float, float]:
    """Where the product goes in the edit: (x0, y0, x1, y1), long side ``scale`` x the hold's."""
    w, h = product.extent(hold.ratio * person.hand_r * scale)
    cx, cy = center or (person.hand_x + hold.dx * person.hand_r, person.hand_y + hold.dy * person.hand_r)
    return cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2


def fits(box: tuple[float, float, float, float], size: int, margin: float = 1.0) -> bool:
    return box[0] >= margin and box[1] >= margin and box[2] <= size - margin and box[3] <= size - margin


def sample_scene(rng: random.Random, size: int = SIZE) -> Scene:
    """A (person, product, hold) whose correct edit keeps the product inside the frame."""
    product = sample_product(rng, size)
    while True:
        person, hold = sample_person(rng, size), sample_hold(rng)
        if fits(product_box(person, product, hold), size):
            return Scene(person, product, hold)


@dataclass(frozen=True)
class Placement:
    """One product drawn in an edit: its box (output pixels) and whether the hand's fingers lie over it."""

    product: ProductParams
    box: tuple[float, float, float, float]
    fingers: bool


@dataclass(frozen=True)
class EditLayout:
    """Everything a rendered edit shows: the person as drawn (altered only by the ``person_altered``
    failure), the products placed in it, an extra hand if any, and the failure's name (None = correct).
    Tests and the simulated annotator read it; the judge never does."""

    person: PersonParams
    placements: tuple[Placement, ...]
    extra_hand: tuple[float, float, float, float] | None = None  # (x, y, radius, angle) of a second open hand
    failure: str | None = None
    detail: str = ""  # what the failure changed, in words


def correct_layout(person: PersonParams, product: ProductParams, hold: Hold | None = None) -> EditLayout:
    """The target edit: the same person, the product on the palm at the hold's scale, fingers over it."""
    hold = hold or Hold()
    return EditLayout(person, (Placement(product, product_box(person, product, hold), True),))
