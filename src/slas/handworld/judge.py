"""The product-in-hand world's ground-truth judge: four criteria read from (person, product, edit) pixels alone.

No learning and no scene parameters: the judge finds the hand in the person image (skin-coloured regions
below the head: skin is the only moderately saturated orange in the world's palettes), the product in the
product photo (what differs from its plain border colour), and the edit's objects as the compact regions
where the edit differs from the person (both smoothed first, so noise, blur and JPEG do not count as change).

- presence: exactly one product-like object: a changed region of plausible size that fills most of its box
  (a figure shifted by a few pixels changes thin bands along its outlines, which are not objects);
- similarity: the object at the hand matches the reference product, scale-invariantly. Its outline is
  traced by blend ratio (a pixel E = a*c + (1-a)*P between the person's colour P and a product colour c has
  a = |E-P| / (|E-P| + |E-c|); the product is where a >= 1/2, holes such as fingers filled). Compared: body
  colour (share of inner pixels near the reference's), silhouette (soft coverage on a grid over the
  outline's own moment frame, mean +- 2 std per axis), aspect (ratio of those stds) and marks (the
  reference photo's product resampled onto the edit's product box, mark maps compared where no finger
  covers them);
- interaction: the object covers part of the hand, its long side is plausible for the hand (in units of
  sqrt(hand area)), there is no second product-like object, and no new skin thicker than a finger (a palm:
  an extra hand);
- person_preserved: outside the held product's outline (and outlines of other objects that match the
  reference: a duplicate is an interaction failure) almost nothing changed.

``overall`` is all four. :func:`judge` returns booleans, :func:`judge_scores` the same tests as scores in
[0, 1] with 0.5 at each threshold (score >= 0.5 exactly when the boolean holds).

Measured on the renderer's own images (tests/test_handworld.py protocol: seed 2026, never used to set a
threshold; 64 px; 2026-11-29):

- 1,000 correct edits: overall 99.2% correct (presence 100%, similarity 99.5%, interaction 99.7%,
  person_preserved 100%).
- 300 edits per single failure, share judged wrong overall (and share where the criterion it breaks fails):
  missing 100% (presence 100%), wrong_color 100% (similarity 100%), wrong_pattern 99.7% (99.7%),
  wrong_shape 99.7% (99.7%), floating 100% (interaction 100%), duplicated 100% (99.7%), too_large 100%
  (100%), too_small 100% (100%), person_altered 99.7% (person_preserved 92%; the rest fail presence or
  interaction: a recoloured part is a second changed region), extra_hand 100% (interaction 100%).
  Other criteria fail alongside sometimes: a wrong-coloured product also fails person_preserved in 69% of
  cases (its outline cannot be traced by colour, so its changed region counts as change).
- 300 correct edits degraded: Gaussian noise sigma 4/255 99.3%, Gaussian blur sigma 0.6 px 97.3%, JPEG
  quality 90 without chroma subsampling (4:4:4) 99.0%. With 4:2:0 chroma subsampling (PIL's default)
  only 82.3% pass: halving the colour resolution smears the 3-6 px marks and the rims of a 13-19 px
  product, so similarity fails; an edit model's output is not chroma-subsampled, but a JPEG-saved one is.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage

from slas.images import rgb_to_hsv, to_uint8

CRITERIA = ("presence", "similarity", "interaction", "person_preserved")

CHANGE = 0.12  # max-channel difference of the smoothed edit and person that counts as a change
SMOOTH = 1.0  # Gaussian sigma (px) applied to both before comparing
MIN_OBJECT = 10  # px at 64 x 64 (scaled by area): a smaller changed region is no object
MAX_OBJECT = 0.45  # of the image: a larger changed region is the scene changing, not an object
MIN_SOLIDITY = 0.45  # object area / its box area (thin bands along outlines are not objects)
GRID = 6  # cells per side of the silhouette grid
PATTERN_BLUR = 0.8  # px: mark maps are compared after this blur (tolerates sub-pixel misalignment)
COLOR_NEAR = 0.25  # RGB distance in [0, 1] units within which a pixel has the reference's body colour
COLOR_TOL = 0.8  # 1 - the share of the object's inner pixels that have the reference's body colour
SHAPE_TOL = 0.1  # mean absolute silhouette-grid difference
ASPECT_TOL = 0.2  # |log(aspect ratio)|
PATTERN_TOL = 0.36  # mark-map distance, sum |a - b| / sum (a + b)
CONTACT = 0.08  # share of the hand the object must cover
SCALE = (1.15, 2.4)  # object's long side / sqrt(hand area)
EXTRA_SKIN = 4  # new skin pixels (at 64 x 64, after a 3 x 3 erosion) that make an extra hand
OUTSIDE_CHANGE = 0.006  # share of the image that may change outside the product


# ------------------------------------------------------------------------------------------- inputs


def as_batch(images: Any) -> np.ndarray:
    """Images as float [N, H, W, 3] in [0, 1]: from a [N, 3, H, W] / [3, H, W] tensor in [0, 1], a uint8
    [N, H, W, 3] / [H, W, 3] array, or a sequence of PIL images / arrays / tensors."""
    if isinstance(images, (list, tuple)):
        return np.stack([to_uint8(x) for x in images]).astype(np.float32) / 255.0
    if hasattr(images, "detach"):
        images = images.detach().cpu()
        if images.ndim == 4:
            images = images.permute(0, 2, 3, 1)
        elif images.ndim == 3 and images.shape[0] == 3:
            images = images.permute(1, 2, 0)
        images = images.float().numpy()
        arr = np.asarray(images, np.float32)
    else:
        arr = np.asarray(images)
        arr = arr.astype(np.float32) / 255.0 if arr.dtype == np.uint8 else arr.astype(np.float32)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"expected images [N, 3, H, W] or [N, H, W, 3], got shape {tuple(arr.shape)}")
    return np.clip(arr, 0.0, 1.0)


# ------------------------------------------------------------------------------------------- pieces


def skin_mask(arr: np.ndarray) -> np.ndarray:
    """Skin-like pixels: an orange hue, moderate saturation, not dark."""
    hue, sat, val = rgb_to_hsv(arr)
    return (hue >= 0.02) & (hue <= 0.14) & (sat >= 0.2) & (sat <= 0.72) & (val >= 0.3)


_EIGHT = np.ones((3, 3), bool)


def _components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    return ndimage.label(mask, structure=_EIGHT)


def find_hand(person: np.ndarray, skin: np.ndarray | None = None) -> np.ndarray:
    """The hand: the largest skin region other than the topmost (the head). Empty if there is none."""
    labels, n = _components(skin_mask(person) if skin is None else skin)
    if n < 2:
        return np.zeros(person.shape[:2], bool)
    slices = ndimage.find_objects(labels)
    head = min(range(n), key=lambda i: slices[i].__getitem__(0).start)
    sizes = ndimage.sum_labels(np.ones_like(labels), labels, index=np.arange(1, n + 1))
    sizes[head] = -1
    return labels == int(np.argmax(sizes)) + 1


def densest_color(pixels: np.ndarray, radius: float = 0.12) -> np.ndarray:
    """The colour most pixels share (mean shift from the fullest coarse colour bin): robust to marks, edges,
    fingers and noise. NaN for no pixels."""
    if len(pixels) == 0:
        return np.full(3, np.nan, np.float32)
    bins = np.minimum((pixels * 8).astype(np.int32), 7)
    keys = bins[:, 0] * 64 + bins[:, 1] * 8 + bins[:, 2]
    center = pixels[keys == np.bincount(keys, minlength=512).argmax()].mean(0)
    for _ in range(3):
        near = np.linalg.norm(pixels - center, axis=-1) <= radius
        if not near.any():
            break
        center = pixels[near].mean(0)
    return center


def _largest(mask: np.ndarray) -> np.ndarray:
    labels, n = _components(mask)
    if n <= 1:
        return labels > 0
    return labels == int(np.bincount(labels.ravel())[1:].argmax()) + 1


def _crop(mask: np.ndarray, pad: int = 0) -> tuple[slice, slice]:
    ys, xs = np.nonzero(mask)
    h, w = mask.shape
    return (slice(max(ys.min() - pad, 0), min(ys.max() + 1 + pad, h)),
            slice(max(xs.min() - pad, 0), min(xs.max() + 1 + pad, w)))


def _axis_weights(lo: float, hi: float, n: int, cells: int) -> np.ndarray:
    """[cells, n]: overlap of pixel i (covering [i, i+1]) with each of ``cells`` equal parts of [lo, hi]."""
    edges = np.linspace(lo, hi, cells + 1)
    px = np.arange(n)
    return np.clip(np.minimum(edges[1:, None], px + 1) - np.maximum(edges[:-1, None], px), 0, None)


@dataclass
class Frame:
    """A product's own frame: its soft silhouette's mean +- 2 std per axis cut into GRID x GRID cells, so grids
    over it compare products of any size (scale-invariant) at sub-pixel precision."""

    wy: np.ndarray
    wx: np.ndarray
    aspect: float  # std_y / std_x: height / width for a rectangle
    cy: tuple[float, float] = (0.0, 0.0)  # (mean, std) per axis
    cx: tuple[float, float] = (0.0, 0.0)

    @classmethod
    def of(cls, soft: np.ndarray) -> Frame:
        h, w = soft.shape
        total = max(float(soft.sum()), 1e-6)
        py, px = soft.sum(1), soft.sum(0)
        ys, xs = np.arange(h) + 0.5, np.arange(w) + 0.5
        my, mx = (py * ys).sum() / total, (px * xs).sum() / total
        sy = np.sqrt((py * (ys - my) ** 2).sum() / total + 1 / 12)
        sx = np.sqrt((px * (xs - mx) ** 2).sum() / total + 1 / 12)
        return cls(_axis_weights(my - 2 * sy, my + 2 * sy, h, GRID), _axis_weights(mx - 2 * sx, mx + 2 * sx, w, GRID),
                   float(sy / sx), (my, sy), (mx, sx))

    def grid(self, values: np.ndarray, cells: int = GRID) -> np.ndarray:
        """Mean of ``values`` per cell (``cells`` x ``cells`` over the same frame)."""
        wy, wx = self.wy, self.wx
        if cells != GRID:
            h, w = values.shape
            wy = _axis_weights(self.cy[0] - 2 * self.cy[1], self.cy[0] + 2 * self.cy[1], h, cells)
            wx = _axis_weights(self.cx[0] - 2 * self.cx[1], self.cx[0] + 2 * self.cx[1], w, cells)
        area = wy.sum(1)[:, None] * wx.sum(1)[None]
        return (wy @ values.astype(np.float32) @ wx.T) / np.maximum(area, 1e-6)


@dataclass
class Reference:
    """What the judge reads from a product photo."""

    color: np.ndarray
    mark: np.ndarray | None  # the marks' colour (None: no marks found)
    silhouette: np.ndarray  # GRID x GRID soft coverage
    aspect: float
    found: bool
    crop: np.ndarray | None = None  # the product's box in the photo, HxWx3 (resized to the edit's product)
    mask: np.ndarray | None = None  # its filled mask there, float


def _soft_marks(img: np.ndarray, inside: np.ndarray, color: np.ndarray, mark: np.ndarray | None) -> np.ndarray:
    """Per pixel, how much of it is mark (linear in blending, so a mark's area survives blur and scale)."""
    if mark is None:
        return np.zeros(inside.shape, np.float32)
    span = max(float(np.linalg.norm(mark - color)), 0.1)
    return np.clip(np.linalg.norm(img - color, axis=-1) / span, 0, 1) * inside


def read_product(product: np.ndarray) -> Reference:
    """The product in its photo: whatever differs from the border's colour, largest region, holes filled."""
    border = np.concatenate([product[0], product[-1], product[:, 0], product[:, -1]])
    bg = np.median(border, 0)
    found = _largest(np.abs(product - bg).max(-1) > 0.1)
    if found.sum() < 4:
        return Reference(np.full(3, np.nan), None, np.zeros((GRID, GRID)), 1.0, False)
    filled = ndimage.binary_fill_holes(found)
    color = densest_color(product[filled])
    inside = ndimage.binary_erosion(filled, iterations=1)
    far = inside & (np.linalg.norm(product - color, axis=-1) > 0.25)
    mark = densest_color(product[far]) if far.sum() >= 4 else None
    contrast = max(float(np.linalg.norm(color - bg)), 0.05)
    soft = np.where(inside, 1.0, np.clip(np.linalg.norm(product - bg, axis=-1) / contrast, 0, 1)
                    * ndimage.binary_dilation(filled))
    frame = Frame.of(soft)
    sy, sx = _crop(filled)
    return Reference(color, mark, frame.grid(soft), frame.aspect, True, product[sy, sx], filled[sy, sx])


# ------------------------------------------------------------------------------------------- one triple


def _margin(value: float, limit: float) -> float:
    """A score in [0, 1] that is 0.5 at ``value == limit``, 1 at 0 and 0 at twice the limit."""
    return float(np.clip(1.0 - 0.5 * value / limit, 0.0, 1.0))


def _band(value: float, lo: float, hi: float) -> float:
    """0.5 at either end of [lo, hi], 1 at its geometric middle, falling off outside in log units."""
    half = np.log(hi / lo) / 2
    return _margin(abs(np.log(max(value, 1e-6) / np.sqrt(lo * hi))), half)


def _objects(changed: np.ndarray, scale: float) -> list[np.ndarray]:
    """Product-like objects: compact changed regions (holes filled) of plausible size."""
    labels, _n = _components(changed)
    h, w = changed.shape
    objects = []
    for i, sl in enumerate(ndimage.find_objects(labels), start=1):
        comp = labels[sl] == i
        area = int(comp.sum())
        if area < MIN_OBJECT * scale or area > MAX_OBJECT * h * w:
            continue
        filled = ndimage.binary_fill_holes(comp)
        if filled.sum() / filled.size < MIN_SOLIDITY:
            continue
        full = np.zeros((h, w), bool)
        full[sl] = filled
        objects.append(full)
    return objects


def _silhouette(edit, person, obj, ref: Reference, skin) -> tuple[np.ndarray, np.ndarray] | None:
    """(filled product mask, soft coverage) of the object. A pixel blended from the person's colour P and a
    product colour c (body or mark) as a*c + (1-a)*P has a = |E-P| / (|E-P| + |E-c|); it belongs to the
    product when a >= 1/2. Skin is excluded (fingers inside become holes and are filled; a hand outside stays
    out)."""
    region = ndimage.binary_dilation(obj)
    to_person = np.linalg.norm(edit - person, axis=-1)
    to_product = np.linalg.norm(edit - ref.color, axis=-1)
    if ref.mark is not None:
        to_product = np.minimum(to_product, np.linalg.norm(edit - ref.mark, axis=-1))
    soft = to_person / np.maximum(to_person + to_product, 1e-6) * region * ~skin
    core = _largest(soft >= 0.5)
    if core.sum() < 3:
        return None
    # fingers are skin inside the changed region: they bound the product too (a finger band may reach its
    # antialiased rim), so they take part in enclosing holes; a hand outside the changed region does not
    barrier = _largest(core | (skin & obj))
    filled = ndimage.binary_fill_holes(ndimage.binary_closing(barrier, _EIGHT, border_value=0) | barrier)
    inside = ndimage.binary_erosion(filled)
    return filled, np.where(inside, 1.0, soft * ndimage.binary_dilation(filled))


def _similarity(edit, filled, soft, ref: Reference, skin) -> dict[str, float]:
    """Distances of the object to the reference: colour, silhouette, aspect, pattern."""
    frame = Frame.of(soft)
    inside = ndimage.binary_erosion(filled)
    usable = inside & ~ndimage.binary_dilation(skin)
    pool = edit[usable] if usable.sum() >= 3 else edit[filled & ~skin]
    share = float((np.linalg.norm(pool - ref.color, axis=-1) <= COLOR_NEAR).mean()) if len(pool) else 0.0
    return {"color": 1.0 - share, "pattern": _pattern_distance(edit, filled, usable, ref),
            "shape": float(np.abs(frame.grid(soft) - ref.silhouette).mean()),
            "aspect": abs(float(np.log(frame.aspect / ref.aspect)))}


def _resize(arr: np.ndarray, h: int, w: int) -> np.ndarray:
    """Area-resample a float HxW or HxWx3 array to h x w (each channel as a 32-bit float image)."""
    chans = arr[..., None] if arr.ndim == 2 else arr
    out = np.stack([np.asarray(Image.fromarray(chans[..., c].astype(np.float32), "F").resize((w, h), Image.Resampling.BOX))
                    for c in range(chans.shape[-1])], -1)
    return out[..., 0] if arr.ndim == 2 else out


def _pattern_distance(edit, filled, usable, ref: Reference) -> float:
    """How differently the marks lie: the reference photo's product is resampled onto the edit's product box
    (so both are seen at the same scale, rims and blending alike), mark maps are compared where the edit's
    product is visible (not under fingers): sum |a - b| / sum (a + b) after a light blur, 0 = same marks,
    1 = disjoint. No marks on either side gives 0."""
    sy, sx = _crop(filled)
    h, w = sy.stop - sy.start, sx.stop - sx.start
    small = _resize(ref.crop, h, w)
    inside_ref = ndimage.binary_erosion(_resize(ref.mask, h, w) >= 0.5)
    m_ref = _soft_marks(small, inside_ref, ref.color, ref.mark)
    m_edit = _soft_marks(edit[sy, sx], usable[sy, sx], ref.color, ref.mark)
    weight = (usable[sy, sx] & inside_ref).astype(np.float32)
    a = ndimage.gaussian_filter(m_edit * weight, PATTERN_BLUR)
    b = ndimage.gaussian_filter(m_ref * weight, PATTERN_BLUR)
    return float(np.abs(a - b).sum() / max((a + b).sum(), 1.0))


_MISSING = {"contact": 0.0, "size": 0.0, "extra_skin": 0.0, "color": 9.0, "shape": 9.0, "aspect": 9.0, "pattern": 9.0}


@dataclass
class PersonView:
    """What the judge reads from a person image alone (shared by every edit of that person)."""

    smooth: np.ndarray
    skin: np.ndarray  # skin-like pixels
    hand: np.ndarray
    skin_rgb: np.ndarray | None  # the hand's colour


def read_person(person: np.ndarray) -> PersonView:
    skin = skin_mask(person)
    hand = find_hand(person, skin)
    return PersonView(ndimage.gaussian_filter(person, (SMOOTH, SMOOTH, 0)), skin, hand,
                      np.median(person[hand], 0) if hand.any() else None)


def measure(person: np.ndarray, product: np.ndarray, edit: np.ndarray, ref: Reference | None = None,
            view: PersonView | None = None) -> dict[str, float]:
    """Every measurement behind the verdicts of one (person, product, edit), float HxWx3 in [0, 1]."""
    h, w = person.shape[:2]
    scale = h * w / 64**2
    view = view or read_person(person)
    sp = view.smooth
    se = ndimage.gaussian_filter(edit, (SMOOTH, SMOOTH, 0))
    ref = ref or read_product(product)
    person_skin, hand = view.skin, view.hand
    hand_area = int(hand.sum())
    changed = np.abs(se - sp).max(-1) > CHANGE
    objects = _objects(changed, scale)
    out = {"objects": float(len(objects)), "hand_area": float(hand_area), "ref_found": float(ref.found)}
    if view.skin_rgb is not None:
        skin = np.linalg.norm(edit - view.skin_rgb, axis=-1) < 0.16
    else:
        skin = np.zeros((h, w), bool)
    if not objects:
        out["outside_change"] = float(changed.mean())
        return out | _MISSING
    k = max(range(len(objects)), key=lambda i: ((objects[i] & hand).sum(), objects[i].sum()))
    obj = objects[k]
    sil = _silhouette(edit, person, obj, ref, skin) if ref.found else None
    filled = sil[0] if sil is not None else obj
    similarity = _similarity(edit, sil[0], sil[1], ref, skin) if sil is not None else dict.fromkeys(_SIMILAR, 9.0)
    # what may change: the held object's own outline (not a recoloured sleeve merged with it) and other
    # objects that look like the product (a duplicate is an interaction failure, not an altered person)
    allowed = filled.copy()
    for i, other in enumerate(objects):
        if i != k:
            copy = _silhouette(edit, person, other, ref, skin) if ref.found else None
            if copy is not None and _similar(_similarity(edit, copy[0], copy[1], ref, skin)):
                allowed |= copy[0]
    out["outside_change"] = float((changed & ~ndimage.binary_dilation(allowed, iterations=2)).mean())
    sy, sx = _crop(filled)
    out["contact"] = float((obj & hand).sum() / max(hand_area, 1))
    long_side = max(sy.stop - sy.start, sx.stop - sx.start)
    out["size"] = long_side / np.sqrt(hand_area) if hand_area else 0.0
    # new skin thicker than a finger (a palm survives a 3 x 3 erosion, a finger band drawn over the product
    # does not): an extra hand, wherever it is
    new_skin = ndimage.binary_erosion(changed & skin & ~person_skin, _EIGHT)
    out["extra_skin"] = float(new_skin.sum() / scale)
    return out | similarity


_SIMILAR = {"color": COLOR_TOL, "shape": SHAPE_TOL, "aspect": ASPECT_TOL, "pattern": PATTERN_TOL}


def _similar(m: dict[str, float]) -> bool:
    return all(m[k] <= t for k, t in _SIMILAR.items())


def _scores(m: dict[str, float]) -> dict[str, float]:
    """Per-criterion scores in [0, 1] from the measurements; >= 0.5 exactly when the criterion holds."""
    presence = 1.0 if m["objects"] == 1 else 0.0
    if m["objects"] == 0:
        return {"presence": 0.0, "similarity": 0.0, "interaction": 0.0,
                "person_preserved": _margin(m["outside_change"], OUTSIDE_CHANGE)}
    similarity = min(_margin(m["color"], COLOR_TOL), _margin(m["shape"], SHAPE_TOL),
                     _margin(m["aspect"], ASPECT_TOL), _margin(m["pattern"], PATTERN_TOL))
    contact = float(np.clip(m["contact"] / (2 * CONTACT), 0.0, 1.0))
    interaction = min(contact, _band(m["size"], *SCALE), _margin(m["extra_skin"], EXTRA_SKIN),
                      1.0 if m["objects"] == 1 else 0.0)
    return {"presence": presence, "similarity": similarity, "interaction": interaction,
            "person_preserved": _margin(m["outside_change"], OUTSIDE_CHANGE)}


def _strict(m: dict[str, float]) -> dict[str, bool]:
    """The verdicts, from the raw measurements (not the rounded scores)."""
    one = m["objects"] == 1
    found = m["objects"] >= 1
    return {
        "presence": one,
        "similarity": found and _similar(m),
        "interaction": one and m["contact"] >= CONTACT and SCALE[0] <= m["size"] <= SCALE[1]
        and m["extra_skin"] <= EXTRA_SKIN,
        "person_preserved": m["outside_change"] <= OUTSIDE_CHANGE,
    }


# ------------------------------------------------------------------------------------------- batches


def _triples(person: Any, product: Any, edit: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    p, q, e = as_batch(person), as_batch(product), as_batch(edit)
    if not (len(p) == len(q) == len(e)):
        raise ValueError(f"judge: batch sizes differ: person {len(p)}, product {len(q)}, edit {len(e)}")
    if p.shape[1:] != e.shape[1:]:
        raise ValueError(f"judge: person {p.shape[1:3]} and edit {e.shape[1:3]} differ in size")
    return p, q, e


_READ: dict[bytes, Reference | PersonView] = {}


def _remembered(image: np.ndarray, read, tag: str):
    """``read(image)``, remembered by the image's bytes: a rollout group shares one person and one product."""
    key = tag.encode() + hashlib.blake2b(image.tobytes(), digest_size=16).digest() + str(image.shape).encode()
    value = _READ.get(key)
    if value is None:
        if len(_READ) >= 4096:
            _READ.clear()
        value = _READ[key] = read(image)
    return value


def measure_batch(person: Any, product: Any, edit: Any) -> list[dict[str, float]]:
    """:func:`measure` for each item of a batch (images as :func:`as_batch` takes them)."""
    p, q, e = _triples(person, product, edit)
    return [measure(p[i], q[i], e[i], _remembered(q[i], read_product, "product"),
                    _remembered(p[i], read_person, "person")) for i in range(len(p))]


def judge(person: Any, product: Any, edit: Any) -> dict[str, np.ndarray]:
    """Per-criterion verdicts for a batch: ``{criterion: bool [N]}`` for :data:`CRITERIA` and ``overall``
    (all four). Images as :func:`as_batch` takes them (tensors [N, 3, H, W] in [0, 1] or uint8 arrays)."""
    rows = [_strict(m) for m in measure_batch(person, product, edit)]
    out = {c: np.array([r[c] for r in rows], bool) for c in CRITERIA}
    out["overall"] = np.logical_and.reduce([out[c] for c in CRITERIA]) if rows else np.zeros(0, bool)
    return out


def judge_scores(person: Any, product: Any, edit: Any) -> dict[str, np.ndarray]:
    """Per-criterion scores in [0, 1] for a batch (0.5 at each threshold); ``overall`` is their minimum."""
    rows = [_scores(m) for m in measure_batch(person, product, edit)]
    out = {c: np.array([r[c] for r in rows], np.float32) for c in CRITERIA}
    out["overall"] = np.minimum.reduce([out[c] for c in CRITERIA]) if rows else np.zeros(0, np.float32)
    return out


def criteria_of(verdicts: dict[str, np.ndarray], index: int) -> Sequence[str]:
    """The criteria that fail for item ``index`` of a :func:`judge` result (for messages and reports)."""
    return [c for c in CRITERIA if not verdicts[c][index]]
