"""Write the product-in-hand world as an editing dataset on disk: the same files a team would hand ``slas``.

:func:`build_dataset` renders ``n_pairs`` (person, product, target edit) triples into a folder::

    out/
      persons/person_00000.png ...     one person per pair
      products/product_0000.png ...    each product once (several persons hold the same product)
      edits/edit_00000.png ...         the target edit of each pair
      pairs.jsonl                      slas.editing.data rows {id, person, product, description, split}
      targets.jsonl                    {id, edit, scene}: the target image and the scene parameters

``pairs.jsonl`` is exactly what ``slas data check`` and ``data.pairs`` read (paths relative to the file);
a seeded share of whole products is held out as split ``test`` (``slas.editing.data.split_by_product``),
so no held-out product is ever trained on through another person. ``targets.jsonl`` sits beside it because
the pairs format has no target field: it keeps the target edit and the parameters that drew it (person,
product, hold) for pretraining, evaluation and the simulated annotator. Both JSONL files are written last,
atomically, so a folder with a ``pairs.jsonl`` always has every image it names.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from PIL import Image

from slas.editing.data import EditPair, pairs_jsonl, split_by_product
from slas.errors import SlasError
from slas.files import write_atomic
from slas.handworld.render import render_edit, render_person, render_product
from slas.handworld.scene import (
    SIZE,
    ProductParams,
    Scene,
    fits,
    product_box,
    sample_hold,
    sample_person,
    sample_product,
)

PAIRS, TARGETS = "pairs.jsonl", "targets.jsonl"


class DatasetError(SlasError, ValueError):
    """Arguments that cannot make a dataset (named in the message)."""


@dataclass(frozen=True)
class DatasetFiles:
    """Where :func:`build_dataset` wrote things, and how many pairs each split has."""

    root: Path
    pairs: Path
    targets: Path
    splits: dict[str, int]
    products: int


def describe(product: ProductParams) -> str:
    """The product in words, for the pairs file's ``description`` field."""
    return f"a {product.color} {product.kind} with a {product.mark} {product.pattern} mark"


def _distinct_products(rng: random.Random, count: int, size: int) -> list[ProductParams]:
    """``count`` products that differ in design (kind, colour, pattern); aspects vary too."""
    seen, out = set(), []
    while len(out) < count:
        p = sample_product(rng, size)
        key = (p.kind, p.color, p.pattern)
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


def _scene_for(rng: random.Random, product: ProductParams, size: int) -> Scene:
    while True:
        person, hold = sample_person(rng, size), sample_hold(rng)
        if fits(product_box(person, product, hold), size):
            return Scene(person, product, hold)


def _check_args(n_pairs: int, n_products: int, held_out: float) -> None:
    if n_pairs < 1:
        raise DatasetError(f"n_pairs={n_pairs}: give at least 1 pair")
    if not 1 <= n_products <= n_pairs:
        raise DatasetError(f"n_products={n_products}: give between 1 and n_pairs ({n_pairs}) products")
    if n_products > 140:
        raise DatasetError(f"n_products={n_products}: the world has 140 designs (5 kinds x 7 colours x 4 patterns)")
    if not 0 <= held_out < 1:
        raise DatasetError(f"held_out={held_out}: give a fraction in [0, 1)")
    if held_out > 0 and n_products < 2:
        raise DatasetError(f"held_out={held_out} needs at least 2 products (n_products={n_products})")


def build_dataset(directory: str | Path, n_pairs: int, *, n_products: int | None = None, seed: int = 0,
                  held_out: float = 0.2, size: int = SIZE) -> DatasetFiles:
    """Render ``n_pairs`` triples into ``directory`` (see the module docstring) and return where they are.

    ``n_products`` distinct product designs (default: one per four pairs, at least 2) are spread round-robin
    over the pairs; ``held_out`` of them (with all their pairs) get split ``test``. Deterministic in
    ``seed``: the same arguments write the same bytes.
    """
    n_products = n_products if n_products is not None else max(2, min(n_pairs // 4, 140))
    _check_args(n_pairs, n_products, held_out)
    root = Path(directory)
    for sub in ("persons", "products", "edits"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    products = _distinct_products(rng, n_products, size)
    for j, product in enumerate(products):
        Image.fromarray(render_product(product)).save(root / "products" / f"product_{j:04d}.png")
    pairs, targets = [], []
    for i in range(n_pairs):
        j = i % n_products
        scene = _scene_for(rng, products[j], size)
        Image.fromarray(render_person(scene.person)).save(root / "persons" / f"person_{i:05d}.png")
        Image.fromarray(render_edit(scene.person, scene.product, scene.hold)).save(root / "edits" / f"edit_{i:05d}.png")
        pid = f"pair_{i:05d}"
        pairs.append(EditPair(pid, f"persons/person_{i:05d}.png", f"products/product_{j:04d}.png", root,
                              description=describe(scene.product)))
        targets.append({"id": pid, "edit": f"edits/edit_{i:05d}.png", "scene": asdict(scene)})
    if held_out > 0:
        _, held = split_by_product(pairs, held_out, seed)
        test = {p.id for p in held}
        pairs = [replace(p, split="test") if p.id in test else p for p in pairs]
    write_atomic(root / TARGETS, "".join(json.dumps(t) + "\n" for t in targets))
    write_atomic(root / PAIRS, pairs_jsonl(pairs, root))
    splits: dict[str, int] = {}
    for p in pairs:
        splits[p.split] = splits.get(p.split, 0) + 1
    return DatasetFiles(root, root / PAIRS, root / TARGETS, splits, n_products)
