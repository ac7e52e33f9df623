"""Single-failure edits: the target edit with exactly one thing wrong, as an :class:`EditLayout`.

Tests use them to show the judge says "wrong" for each way an edit can fail; the simulated annotator will
use them (with their layouts) to make graded examples. Random choices come from the ``rng`` given, so a
failure is deterministic in its seed.
"""

from __future__ import annotations

import math
import random
from dataclasses import replace

from slas.handworld.scene import (
    ASPECTS,
    CLOTHING,
    KINDS,
    PATTERNS,
    PRODUCT_COLORS,
    SKIN_TONES,
    EditLayout,
    Hold,
    PersonParams,
    Placement,
    ProductParams,
    fits,
    mark_for,
    product_box,
)

FAILURES = ("missing", "wrong_color", "wrong_pattern", "wrong_shape", "floating", "duplicated", "too_large",
            "too_small", "person_altered", "extra_hand")
"""Every single failure; the criterion each one breaks is :data:`BREAKS`."""

BREAKS = {
    "missing": "presence", "wrong_color": "similarity", "wrong_pattern": "similarity", "wrong_shape": "similarity",
    "floating": "interaction", "duplicated": "interaction", "too_large": "interaction", "too_small": "interaction",
    "person_altered": "person_preserved", "extra_hand": "interaction",
}


def _dist(a, b) -> float:
    return math.dist(a, b)


def _held(person: PersonParams, product: ProductParams, hold: Hold, scale: float = 1.0) -> Placement:
    return Placement(product, product_box(person, product, hold, scale), True)


def _away_from_hand(person: PersonParams, product: ProductParams, hold: Hold, rng: random.Random,
                    avoid: tuple = ()) -> tuple[float, float, float, float]:
    """A box for the product at the hold's scale, inside the frame, at least 2 px clear of the whole hand
    (palm, fingers, thumb) and of the boxes in ``avoid``."""
    w, h = product.extent(hold.ratio * person.hand_r)
    reach = 2.5 * person.hand_r + 2.0
    for _ in range(2000):
        cx = rng.uniform(w / 2 + 1, person.size - w / 2 - 1)
        cy = rng.uniform(h / 2 + 1, person.size - h / 2 - 1)
        box = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
        nx = min(max(person.hand_x, box[0]), box[2])  # nearest point of the box to the palm centre
        ny = min(max(person.hand_y, box[1]), box[3])
        if _dist((nx, ny), (person.hand_x, person.hand_y)) < reach:
            continue
        if any(box[0] < b[2] + 2 and b[0] < box[2] + 2 and box[1] < b[3] + 2 and b[1] < box[3] + 2 for b in avoid):
            continue
        if fits(box, person.size):
            return box
    raise RuntimeError("no room for a product away from the hand")


def _altered_person(person: PersonParams, rng: random.Random) -> tuple[PersonParams, str]:
    """The person changed in one visible way: clothing, background, skin, head size or a shift."""
    what = rng.choice(("clothing", "background", "skin", "head", "shift"))
    if what == "clothing":
        new = rng.choice([c for c, v in CLOTHING.items() if _dist(v, CLOTHING[person.clothing]) >= 60])
        return replace(person, clothing=new), f"clothing {person.clothing} -> {new}"
    if what == "background":
        while True:
            bg = tuple(rng.randrange(60, 220) for _ in range(3))
            if max(abs(a - b) for a, b in zip(bg, person.background, strict=True)) >= 60:
                return replace(person, background=bg), f"background {person.background} -> {bg}"
    if what == "skin":
        tones = list(SKIN_TONES)
        i = tones.index(person.skin)
        new = rng.choice([t for j, t in enumerate(tones) if abs(j - i) >= 2])
        return replace(person, skin=new), f"skin {person.skin} -> {new}"
    if what == "head":
        f = rng.choice((0.65, 1.4))
        return replace(person, head_r=person.head_r * f), f"head radius x{f}"
    dx, dy = rng.choice((-3, -2, 2, 3)), rng.choice((-3, -2, 0, 2, 3))
    return (replace(person, body_x=person.body_x + dx, torso_top=person.torso_top + dy, hand_x=person.hand_x + dx,
                    hand_y=person.hand_y + dy), f"figure shifted by ({dx}, {dy}) px")


def failure_layout(person: PersonParams, product: ProductParams, hold: Hold, failure: str,
                   rng: random.Random) -> EditLayout:
    """The target edit of (person, product, hold) with exactly the one ``failure`` (see :data:`FAILURES`)."""
    if failure not in FAILURES:
        raise ValueError(f"unknown failure {failure!r}; known: {', '.join(FAILURES)}")
    held = _held(person, product, hold)
    if failure == "missing":
        return EditLayout(person, (), failure=failure, detail="no product")
    if failure == "wrong_color":
        new = rng.choice([c for c, v in PRODUCT_COLORS.items() if _dist(v, product.rgb) >= 90])
        other = replace(product, color=new, mark=mark_for(PRODUCT_COLORS[new]))
        return EditLayout(person, (_held(person, other, hold),), failure=failure, detail=f"{product.color} -> {new}")
    if failure == "wrong_pattern":
        other = replace(product, pattern=rng.choice([p for p in PATTERNS if p != product.pattern]))
        return EditLayout(person, (_held(person, other, hold),), failure=failure,
                          detail=f"{product.pattern} -> {other.pattern}")
    if failure == "wrong_shape":
        kind = rng.choice([k for k in KINDS if k != product.kind])
        other = replace(product, kind=kind, aspect=round(rng.uniform(*ASPECTS[kind]), 3))
        return EditLayout(person, (_held(person, other, hold),), failure=failure, detail=f"{product.kind} -> {kind}")
    if failure == "floating":
        box = _away_from_hand(person, product, hold, rng)
        return EditLayout(person, (Placement(product, box, False),), failure=failure, detail="product off the hand")
    if failure == "duplicated":
        box = _away_from_hand(person, product, hold, rng, avoid=(held.box,))
        return EditLayout(person, (held, Placement(product, box, False)), failure=failure, detail="second copy")
    if failure in ("too_large", "too_small"):
        scale = rng.uniform(2.0, 2.6) if failure == "too_large" else rng.uniform(0.3, 0.5)
        return EditLayout(person, (_held(person, product, hold, scale),), failure=failure,
                          detail=f"scale x{scale:.2f}")
    if failure == "person_altered":
        altered, detail = _altered_person(person, rng)
        return EditLayout(altered, (_held(altered, product, hold),), failure=failure, detail=detail)
    # extra_hand: a second open hand against the product's body-side edge, fingers pointing away from it
    x0, y0, x1, y1 = held.box
    toward_body = -1 if person.side == "right" else 1
    r = person.hand_r
    x = (x0 if toward_body < 0 else x1) + toward_body * 0.6 * r
    angle = 0.0 if toward_body > 0 else math.pi
    return EditLayout(person, (held,), extra_hand=(x, (y0 + y1) / 2, r, angle), failure=failure,
                      detail="a second hand")
