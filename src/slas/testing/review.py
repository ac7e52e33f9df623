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

PALETTE = [(200, 40, 40), (40, 160, 60), (40, 80, 200), (220, 200, 40), (160, 60, 200), (30, 190, 190)]


def _png(path: Path, colour: tuple[int, int, int], mark: int, size: int = 64) -> str:
    """A flat-coloured square with ``mark`` + 1 white bars, so two images of one set never look alike."""
    arr = np.zeros((size, size, 3), dtype=np.uint8)
    arr[:] = colour
    for k in range(mark % 5 + 1):
        arr[4 + 6 * k : 7 + 6 * k, 8 : size - 8] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
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
            inputs[i] = (_png(root / "inputs" / f"person_{i}.png", (230, 190, 160), i),
                         _png(root / "inputs" / f"product_{i}.png", (90, 90, 90), i + 2))
    rows = []
    for c, label in enumerate(checkpoints):
        for i, prompt in enumerate(prompts):
            for seed in seeds:
                image = _png(root / f"{c:02d}" / f"p{i:04d}_seed{seed}.png", PALETTE[c % len(PALETTE)], i + seed)
                row = {"checkpoint_label": label, "prompt": prompt, "seed": int(seed), "image_path": image,
                       "rewards": {"clip": 0.1 * c + 0.01 * seed, "aesthetic": -0.1 * c}}
                if editing:
                    row["person_image"], row["product_image"] = inputs[i]
                rows.append(row)
    store.add_samples(sset.id, rows)
    return sset.id


__all__ = ["make_review_set"]
