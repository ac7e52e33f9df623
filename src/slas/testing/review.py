"""Comparison sets for tests of ``slas samples`` and the review UI: small PNGs on disk plus their store rows.

The rows look like what ``slas sample`` writes (images under the set's ``out_dir``, rewards per component,
``meta.status = complete``); ``editing=True`` adds person and product input images as the editing sets do.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from slas.platform.db import Store

SKIN, SHIRTS = (224, 180, 150), [(70, 110, 170), (170, 70, 80)]
PRODUCTS = [(40, 140, 90), (200, 150, 40)]


def _scene(path: Path, *, variant: int, mark: int, person: bool = True, product: bool = True,
           size: int = 96) -> str:
    """A small cartoon: a person (head, shirt) and/or a product (a bottle), drawn so that each checkpoint
    ``variant`` has a recognisable style (0 plain, 1 cleaner, 2 over-saturated with a duplicated product,
    3+ shifted hues) and ``mark`` (prompt and seed) moves things around; no two images of a set look alike."""
    from PIL import ImageDraw

    bg = (236, 232, 224) if variant != 2 else (255, 240, 150)
    im = Image.new("RGB", (size, size), bg)
    d = ImageDraw.Draw(im)
    dx = (mark * 7) % 17 - 8
    if person:
        shirt = SHIRTS[mark % 2] if variant != 2 else (255, 0, 60)
        d.ellipse([34 + dx, 12, 58 + dx, 38], fill=SKIN)
        d.rounded_rectangle([24 + dx, 40, 68 + dx, 96], radius=10, fill=shirt)
    if product:
        colour = PRODUCTS[mark % 2] if variant != 2 else (0, 255, 40)
        copies = 2 if variant == 2 else 1
        for k in range(copies):
            x = (60 if person else 38) + dx + 14 * k - (variant == 1) * 6
            d.rounded_rectangle([x, 46, x + 14, 80], radius=4, fill=colour)
            d.rectangle([x + 4, 38, x + 10, 46], fill=(60, 60, 60))
        if person:
            d.ellipse([54 + dx, 58, 66 + dx, 70], fill=SKIN)  # the holding hand
    arr = np.asarray(im).astype(np.int16)
    if variant >= 3:
        arr = arr[..., [1, 2, 0]]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(path)
    return str(path.resolve())


def make_review_set(
    store: Store,
    root: Path,
    *,
    checkpoints: Sequence[str] = ("base", "run/iter_2"),
    prompts: Sequence[str] = ("a red circle", "two blue squares"),
    seeds: Sequence[int] = (0, 1),
    editing: bool = False,
    name: str = "test set",
) -> int:
    """Write one PNG per checkpoint x prompt x seed under ``root`` and their rows; returns the set id.

    Rewards are deterministic: checkpoint ``c`` scores ``0.1 * c + 0.01 * seed`` on ``clip`` and the
    reverse order on ``aesthetic``, so tests know which image each component prefers.
    """
    root = root.resolve()
    sset = store.create_sample_set(name, meta={"status": "complete", "out_dir": str(root),
                                               "seeds": list(seeds), "num_prompts": len(prompts)})
    inputs: dict[int, tuple[str, str]] = {}
    if editing:
        for i in range(len(prompts)):
            inputs[i] = (_scene(root / "inputs" / f"person_{i}.png", variant=0, mark=i, product=False),
                         _scene(root / "inputs" / f"product_{i}.png", variant=0, mark=i, person=False))
    rows = []
    for c, label in enumerate(checkpoints):
        for i, prompt in enumerate(prompts):
            for seed in seeds:
                image = _scene(root / f"{c:02d}" / f"p{i:04d}_seed{seed}.png", variant=c, mark=3 * i + seed)
                row = {"checkpoint_label": label, "prompt": prompt, "seed": int(seed), "image_path": image,
                       "rewards": {"clip": 0.1 * c + 0.01 * seed, "aesthetic": -0.1 * c}}
                if editing:
                    row["person_image"], row["product_image"] = inputs[i]
                rows.append(row)
    store.add_samples(sset.id, rows)
    return sset.id


__all__ = ["make_review_set"]
