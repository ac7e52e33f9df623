"""Write the product-in-hand world as an editing dataset on disk: the same files a team would hand ``slas``.

:func:`build_dataset` renders ``n_pairs`` (person, product, target edit) triples into a folder::

    out/
      persons/person_00000.png ...     one person per pair
      products/product_0000.png ...    each product once (several persons hold the same product)
      edits/edit_00000.png ...         the target edit of each pair
      pairs.jsonl                      slas.editing.data rows {id, person, product, description, split}
      targets.jsonl                    {id, edit, scene}: the target image and the scene parameters

``pairs.jsonl`` is exactly what ``slas data check`` and ``data.pairs`` read (paths relative to the file).
Its split is the world's own: a pair is ``test`` exactly when its product's design is one the world holds
out (:func:`slas.handworld.data.product_split`, the fixed rule the shipped edit model was pretrained
under), so "held-out products" means the same thing here, in pretraining and in the demo's evaluation, and
no held-out product is ever trained on through another person. (A seeded share of products, as
``slas.editing.data.split_by_product`` draws for a team's own photos, would put designs the edit model was
pretrained on into ``test`` and held-out designs into ``train``.) ``targets.jsonl`` sits beside it because
the pairs format has no target field: it keeps the target edit and the parameters that drew it (person,
product, hold) for pretraining, evaluation and the simulated annotator. Both JSONL files are written last,
atomically, so a folder with a ``pairs.jsonl`` always has every image it names.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

from PIL import Image

from slas.editing.data import EditPair, pairs_jsonl
from slas.errors import SlasError
from slas.files import write_atomic
from slas.handworld.data import Split, designs, product_split
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


def _design(product: ProductParams) -> tuple[str, str, str]:
    return product.kind, product.color, product.pattern


def _distinct_products(rng: random.Random, counts: dict[Split, int], size: int) -> list[ProductParams]:
    """``counts[split]`` products of each split's designs (:func:`product_split`), all of different designs
    (kind, colour, pattern), in the order the scene sampler draws them (splits interleaved); aspects vary."""
    seen, out, left = set(), [], dict(counts)
    while any(left.values()):
        p = sample_product(rng, size)
        split = product_split(*_design(p))
        if left[split] and _design(p) not in seen:
            seen.add(_design(p))
            left[split] -= 1
            out.append(p)
    return out


def _scene_for(rng: random.Random, product: ProductParams, size: int) -> Scene:
    while True:
        person, hold = sample_person(rng, size), sample_hold(rng)
        if fits(product_box(person, product, hold), size):
            return Scene(person, product, hold)


def _check_args(n_pairs: int, n_products: int, test_products: int) -> None:
    if n_pairs < 1:
        raise DatasetError(f"n_pairs={n_pairs}: give at least 1 pair")
    if not 1 <= n_products <= n_pairs:
        raise DatasetError(f"n_products={n_products}: give between 1 and n_pairs ({n_pairs}) products")
    n_test, n_train = len(designs("test")), len(designs("train"))
    if n_products > n_test + n_train:
        raise DatasetError(f"n_products={n_products}: the world has {n_test + n_train} designs "
                           "(5 kinds x 7 colours x 4 patterns)")
    if not 0 <= test_products <= min(n_products, n_test):
        raise DatasetError(f"test_products={test_products}: give between 0 and {min(n_products, n_test)} "
                           f"(n_products={n_products}; the world holds out {n_test} designs)")
    if n_products - test_products > n_train:
        raise DatasetError(f"n_products={n_products} with test_products={test_products}: the world has only "
                           f"{n_train} training designs; hold out at least {n_products - n_train}")


def default_test_products(n_products: int) -> int:
    """A fifth of the products (the world's own share: 28 of its 140 designs), at least one when there are
    two or more products, and none when there is one."""
    n_test, n_train = len(designs("test")), len(designs("train"))
    return 0 if n_products < 2 else max(1, round(n_products * n_test / (n_test + n_train)))


def build_dataset(directory: str | Path, n_pairs: int, *, n_products: int | None = None,
                  test_products: int | None = None, seed: int = 0, size: int = SIZE) -> DatasetFiles:
    """Render ``n_pairs`` triples into ``directory`` (see the module docstring) and return where they are.

    ``n_products`` distinct product designs (default: one per four pairs, at least 2) are spread round-robin
    over the pairs; ``test_products`` of them (default :func:`default_test_products`) are drawn from the
    world's held-out designs and the rest from its training designs, so the split of every pair is its
    product's :func:`~slas.handworld.data.product_split`. This argument sets how many held-out products the
    dataset carries, never which designs are held out. Deterministic in ``seed``: the same arguments write
    the same bytes.
    """
    n_products = n_products if n_products is not None else max(2, min(n_pairs // 4, 140))
    test_products = test_products if test_products is not None else default_test_products(n_products)
    _check_args(n_pairs, n_products, test_products)
    root = Path(directory)
    for sub in ("persons", "products", "edits"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    products = _distinct_products(rng, {"train": n_products - test_products, "test": test_products}, size)
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
                              description=describe(scene.product), split=product_split(*_design(scene.product))))
        targets.append({"id": pid, "edit": f"edits/edit_{i:05d}.png", "scene": asdict(scene)})
    write_atomic(root / TARGETS, "".join(json.dumps(t) + "\n" for t in targets))
    write_atomic(root / PAIRS, pairs_jsonl(pairs, root))
    splits: dict[str, int] = {}
    for p in pairs:
        splits[p.split] = splits.get(p.split, 0) + 1
    return DatasetFiles(root, root / PAIRS, root / TARGETS, splits, n_products)
