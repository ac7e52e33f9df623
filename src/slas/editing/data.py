"""Product-in-hand editing pairs: a person photo, a product photo and the instruction to put one in the
other's hand; read from a file or a folder, checked whole before any model loads, and drawn as rollout groups.

Two ways to give pairs (``data.pairs`` in a run config, ``slas data check PATH``):

1. A pairs file, ``.jsonl`` (one JSON object a line) or ``.csv`` (a header row, then one row a pair), with
   the fields ``id``, ``person``, ``product`` and optionally ``instruction`` (default
   :data:`~slas.editing.checks.DEFAULT_INSTRUCTION`), ``description`` (of the product, free text) and
   ``split`` (``train``, ``val`` or ``test``; default ``train``). Image paths are relative to the file's folder
   (absolute paths work too)::

       {"id": "a1", "person": "persons/alice.jpg", "product": "products/mug.jpg", "split": "train"}

2. A folder of photos, as an e-commerce team keeps them::

       photos/
         persons/            one photo per person (host, model); .png .jpg .jpeg .webp .bmp
         products/           one photo per product: training products
         products/val/       (optional) products held out for validation
         products/test/      (optional) products held out for testing: never trained on
         pairs.jsonl         (optional) pairs.jsonl or pairs.csv: exactly which pairs, as in 1.

   With a pairs file in the folder, that file is read (paths relative to the folder). Without one, every
   person is paired with every product: id ``<person name>__<product name>`` (file names without their
   suffix), the default instruction, and the split of the product's folder. Hidden files and files of
   other types are ignored; a subfolder other than the splits is a problem (it would be silently skipped).
   ``slas data split photos --held-out 0.1 --out photos/pairs.jsonl`` writes the explicit pairs with a
   seeded tenth of the products held out (:func:`split_by_product`, :func:`pairs_jsonl`).

Every problem is one line starting with where it is: ``<file>:<line>: <field>: ...`` for a row (the line
number in the file; a CSV's header is line 1), the image file itself for a photo of a folder layout.
:func:`check_pairs` collects all of them; :func:`load_pairs` refuses a source with any (nothing trains on
a bad row). A rollout group is keyed by the (person, product) pair, ``"<person>|<product>"`` with the paths
as written, so the instruction text never changes which item a group is.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import posixpath
import random
import warnings
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from slas.config import read_text_file
from slas.editing.checks import (
    DEFAULT_INSTRUCTION,
    DEFAULT_MIN_SIZE,
    DEFAULT_SPLIT,
    FIELDS,
    REQUIRED_FIELDS,
    SPLITS,
    ImageChecker,
    PairsError,
    check_fields,
)
from slas.errors import SlasError, one_line
from slas.images import load_image, to_pil
from slas.rl.protocols import Group
from slas.rl.sources import EpochSource

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
PAIRS_FILES = ("pairs.jsonl", "pairs.csv")
PERSONS, PRODUCTS = "persons", "products"
CONDITIONS = ("person_images", "product_images")
"""The condition names every editing group carries (what the edit policies and the MLLM judge read)."""


@dataclass(frozen=True)
class EditPair:
    """One (person, product) pair. ``person`` and ``product`` are the paths as written (normalised, ``/``),
    relative to ``root`` unless absolute; ``where`` is ``<file>:<line>`` (or the folder) for messages."""

    id: str
    person: str
    product: str
    root: Path
    instruction: str = DEFAULT_INSTRUCTION
    description: str | None = None
    split: str = DEFAULT_SPLIT
    where: str = ""

    @property
    def key(self) -> str:
        """The group key: the pair itself, never the instruction (one fixed sentence serves every pair)."""
        return f"{self.person}|{self.product}"

    @property
    def person_path(self) -> Path:
        return self.root / self.person

    @property
    def product_path(self) -> Path:
        return self.root / self.product

    def images(self) -> tuple[Image.Image, Image.Image]:
        """The (person, product) photos as RGB PIL images (``slas.images.load_image``: one-line errors)."""
        return to_pil(load_image(self.person_path)), to_pil(load_image(self.product_path))


@dataclass
class PairsCheck:
    """What :func:`check_pairs` found: the usable pairs, every problem (one line each) and the row count."""

    source: Path
    rows: int = 0
    pairs: list[EditPair] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> dict[str, Any]:
        """Counts a reviewer wants before training: rows, usable pairs, distinct persons and products, pairs
        per split, and products that are in more than one split (a held-out product that is also trained on)."""
        splits_of: dict[str, set[str]] = {}
        for p in self.pairs:
            splits_of.setdefault(p.product, set()).add(p.split)
        return {
            "rows": self.rows, "pairs": len(self.pairs), "problems": len(self.problems),
            "persons": len({p.person for p in self.pairs}), "products": len(splits_of),
            "splits": dict(sorted(Counter(p.split for p in self.pairs).items())),
            "products_in_several_splits": sum(len(s) > 1 for s in splits_of.values()),
        }

    def raise_if_any(self) -> None:
        """One :class:`PairsError` listing every problem, one line each."""
        if self.problems:
            raise PairsError("\n".join(self.problems))


# ------------------------------------------------------------------------------------------ reading rows


def _normalised(path: str) -> str:
    """``./a//b.png`` and ``a/b.png`` are one file, so one key; Windows separators read as ``/``."""
    return posixpath.normpath(path.replace("\\", "/"))


def _jsonl_records(source: Path, text: str) -> Iterator[tuple[int, dict[str, Any] | None, str | None]]:
    """(line, record, problem) for every non-blank line: a line that is not a JSON object is a problem."""
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            yield number, None, f"{source}:{number}: not JSON ({exc.msg}); write one JSON object a line"
            continue
        if not isinstance(record, dict):
            yield number, None, f"{source}:{number}: not a JSON object; write one object a line, as " \
                                '{"id": ..., "person": ..., "product": ...}'
            continue
        yield number, record, None


def _csv_records(source: Path, text: str) -> tuple[list[str], Iterator[tuple[int, dict[str, Any] | None, str | None]]]:
    """The header's problems (unknown or missing columns, said once) and the rows; an empty cell is absent."""
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        header = reader.fieldnames or []
    except csv.Error as exc:
        return [f"{source}:1: not readable CSV ({exc})"], iter(())
    problems = [f"{source}:1: unknown column {name!r}; columns are {', '.join(FIELDS)}"
                for name in header if name not in FIELDS]
    problems += [f"{source}:1: missing column {name!r}; every row needs {', '.join(REQUIRED_FIELDS)}"
                 for name in REQUIRED_FIELDS if name not in header]

    def rows() -> Iterator[tuple[int, dict[str, Any] | None, str | None]]:
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                yield reader.line_num, None, f"{source}:{reader.line_num}: not readable CSV ({exc})"
                return
            if None in row:  # more cells than header columns
                yield reader.line_num, None, f"{source}:{reader.line_num}: more cells than the header has columns"
                continue
            yield reader.line_num, {k: v for k, v in row.items() if k in FIELDS and v not in (None, "")}, None

    return problems, rows()


def _check_file(source: Path, root: Path, images: ImageChecker) -> PairsCheck:
    """Every row of a pairs file: its fields, its two images, and that its id and pair are new."""
    result = PairsCheck(source)
    try:
        text = read_text_file(source, "pairs file")
    except SlasError as exc:
        result.problems.append(one_line(exc))
        return result
    if source.suffix.lower() == ".csv":
        header_problems, records = _csv_records(source, text)
        result.problems += header_problems
        if any("missing column" in line for line in header_problems):  # every row would miss it: said once
            return result
    else:
        records = _jsonl_records(source, text)
    ids: dict[str, int] = {}
    keys: dict[str, int] = {}
    for number, record, problem in records:
        result.rows += 1
        if problem is not None:
            result.problems.append(problem)
            continue
        pair = _check_row(source, root, number, record, images, ids, keys, result.problems)
        if pair is not None:
            result.pairs.append(pair)
    if result.rows == 0:
        result.problems.append(f"{source}: holds no pairs; write one row a pair ({', '.join(REQUIRED_FIELDS)})")
    return result


def _check_row(
    source: Path, root: Path, number: int, record: dict[str, Any], images: ImageChecker,
    ids: dict[str, int], keys: dict[str, int], problems: list[str],
) -> EditPair | None:
    """One row's pair, or ``None`` with its problems appended (all of them: fields, images, repeats)."""
    where = f"{source}:{number}"
    fields, found = check_fields(record, where, unknown_ok=source.suffix.lower() == ".csv")
    if fields is None:
        problems.extend(found)
        return None
    pair = EditPair(id=fields.id, person=_normalised(fields.person), product=_normalised(fields.product), root=root,
                    instruction=fields.instruction, description=fields.description, split=fields.split, where=where)
    before = len(problems)
    for name, path in (("person", pair.person_path), ("product", pair.product_path)):
        why = images.problem(path)
        if why is not None:
            problems.append(f"{where}: {name}: {why}")
    if pair.id in ids:
        problems.append(f"{where}: duplicate id {pair.id!r} (first at line {ids[pair.id]}); give every row its own id")
    ids.setdefault(pair.id, number)
    if pair.key in keys:
        problems.append(f"{where}: the pair {pair.person} + {pair.product} repeats line {keys[pair.key]}; "
                        "keep one row per (person, product)")
    keys.setdefault(pair.key, number)
    return pair if len(problems) == before else None


# ---------------------------------------------------------------------------------------- folder layout


def _photos(folder: Path) -> list[Path]:
    """The image files directly in ``folder``, in name order (hidden files and other types ignored)."""
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES)


def _subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _folder_photos(root: Path, problems: list[str]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """(persons, [(product, split)]) of a folder layout; missing folders and stray subfolders are problems."""
    persons: list[Path] = []
    products: list[tuple[Path, str]] = []
    for name in (PERSONS, PRODUCTS):
        if not (root / name).is_dir():
            problems.append(f"{root}: no {name}/ folder; a pairs folder holds {PERSONS}/ and {PRODUCTS}/ "
                            f"(or a {' or '.join(PAIRS_FILES)})")
    if problems:
        return persons, products
    persons = _photos(root / PERSONS)
    problems += [f"{sub}: subfolders of {PERSONS}/ are not read; put person photos directly in {PERSONS}/"
                 for sub in _subfolders(root / PERSONS)]
    products = [(p, DEFAULT_SPLIT) for p in _photos(root / PRODUCTS)]
    for sub in _subfolders(root / PRODUCTS):
        if sub.name in SPLITS:
            products += [(p, sub.name) for p in _photos(sub)]
        else:
            problems.append(f"{sub}: unknown subfolder of {PRODUCTS}/; use {PRODUCTS}/ (train) or "
                            f"{', '.join(f'{PRODUCTS}/{s}/' for s in SPLITS)}")
    for name, found in ((PERSONS, persons), (PRODUCTS, products)):
        if not found:
            problems.append(f"{root / name}: holds no photos ({' '.join(IMAGE_SUFFIXES)})")
    return persons, products


def _unique_names(photos: list[Path], problems: list[str]) -> list[Path]:
    """The photos whose name (without suffix) is the only one of its kind: ids are built from names, so
    ``alice.jpg`` beside ``alice.png`` (or ``mug.jpg`` in two splits) is a problem for both."""
    counts = Counter(p.stem for p in photos)
    for photo in photos:
        if counts[photo.stem] > 1:
            others = ", ".join(str(q) for q in photos if q.stem == photo.stem and q != photo)
            problems.append(f"{photo}: another photo has the name {photo.stem!r} ({others}); pair ids are built from "
                            "names, so rename one (a product in two splits is trained on and held out at once)")
    return [p for p in photos if counts[p.stem] == 1]


def _check_folder(root: Path, images: ImageChecker) -> PairsCheck:
    """Every person x every product of a folder layout; each photo checked once and named by its file."""
    result = PairsCheck(root)
    persons, products = _folder_photos(root, result.problems)
    result.rows = len(persons) * len(products)
    split_of = dict(products)
    good: dict[str, list[Path]] = {}
    for kind, photos in ((PERSONS, persons), (PRODUCTS, list(split_of))):
        unique = _unique_names(photos, result.problems)
        found = [(p, images.problem(p)) for p in photos]
        result.problems += [why for _, why in found if why is not None]
        good[kind] = [p for p, why in found if why is None and p in unique]
    for person in good[PERSONS]:
        for product in good[PRODUCTS]:
            rel_person, rel_product = person.relative_to(root).as_posix(), product.relative_to(root).as_posix()
            result.pairs.append(EditPair(id=f"{person.stem}__{product.stem}", person=rel_person, product=rel_product,
                                         root=root, split=split_of[product], where=f"{root}: {rel_person} x {rel_product}"))
    return result


# ---------------------------------------------------------------------------------------------- public


def check_pairs(path: str | Path, *, min_size: int = DEFAULT_MIN_SIZE) -> PairsCheck:
    """Check a pairs file or folder completely (fields, ids, repeats, every image) and return what was found:
    the usable pairs and ALL problems, one line each. Never raises for bad data; loads no model."""
    source = Path(path)
    images = ImageChecker(min_size=min_size)
    if source.is_dir():
        inner = next((source / name for name in PAIRS_FILES if (source / name).is_file()), None)
        return _check_file(inner, source, images) if inner is not None else _check_folder(source, images)
    if not source.is_file():
        return PairsCheck(source, problems=[f"{source}: pairs file or folder not found"])
    if source.suffix.lower() not in (".jsonl", ".csv"):
        return PairsCheck(source, problems=[f"{source}: a pairs file is .jsonl or .csv (or give a folder with "
                                            f"{PERSONS}/ and {PRODUCTS}/)"])
    return _check_file(source, source.parent, images)


def load_pairs(path: str | Path, *, split: str | None = None, min_size: int = DEFAULT_MIN_SIZE) -> list[EditPair]:
    """The pairs of ``split`` (``None``: all), after checking the WHOLE source: any problem anywhere raises
    one :class:`PairsError` listing every problem (nothing trains on a bad row, nor beside one)."""
    result = check_pairs(path, min_size=min_size)
    result.raise_if_any()
    if split is not None and split not in SPLITS:
        raise PairsError(f"data.split: unknown split {split!r}; use one of {', '.join(SPLITS)}")
    chosen = [p for p in result.pairs if split is None or p.split == split]
    if not chosen:
        have = ", ".join(f"{k} {v}" for k, v in result.summary()["splits"].items())
        raise PairsError(f"{result.source}: no pairs in split {split!r} (it has: {have}); set data.split")
    return chosen


def split_by_product(
    pairs: Sequence[EditPair], held_out_fraction: float, seed: int = 0
) -> tuple[list[EditPair], list[EditPair]]:
    """(train, held_out): a seeded ``held_out_fraction`` of the distinct PRODUCTS, with every pair of those
    products held out, so the held-out set measures products the model never saw (a per-pair split would
    leak every product into training through its other persons).

    Deterministic in ``seed`` and independent of the pairs' order; at least one product is held out when
    the fraction is above 0, and at least one stays in training.
    """
    if not 0 <= held_out_fraction < 1:
        raise PairsError(f"held_out_fraction {held_out_fraction}: give a fraction in [0, 1)")
    products = sorted({p.product for p in pairs})
    if held_out_fraction > 0 and len(products) < 2:
        raise PairsError(f"cannot hold out products from {len(products)} product(s); give at least 2")
    random.Random(seed).shuffle(products)
    count = min(max(round(held_out_fraction * len(products)), 1 if held_out_fraction > 0 else 0), len(products) - 1)
    held = set(products[:count])
    return [p for p in pairs if p.product not in held], [p for p in pairs if p.product in held]


def pairs_jsonl(pairs: Sequence[EditPair], directory: str | Path) -> str:
    """The JSONL text of ``pairs`` for a file in ``directory``: image paths relative to it (so the file can move
    with its photos), the instruction only when it is not the default, the description when there is one."""
    folder = Path(directory).resolve()
    lines = []
    for p in pairs:
        row: dict[str, Any] = {"id": p.id,
                               "person": Path(os.path.relpath(p.person_path.resolve(), folder)).as_posix(),
                               "product": Path(os.path.relpath(p.product_path.resolve(), folder)).as_posix()}
        if p.instruction != DEFAULT_INSTRUCTION:
            row["instruction"] = p.instruction
        if p.description is not None:
            row["description"] = p.description
        row["split"] = p.split
        lines.append(json.dumps(row, ensure_ascii=False) + "\n")
    return "".join(lines)


class EditingSource(EpochSource):
    """The editing :class:`~slas.rl.protocols.DataSource`: pairs drawn epoch by epoch (reshuffled with a seeded
    RNG, as :class:`slas.t2i.prompts.PromptSource`), each a :class:`Group` keyed by its (person, product)
    pair, prompted with its instruction, and carrying ``person_images`` and ``product_images`` (RGB PIL
    images, read when drawn). The position in the epoch is checkpointable."""

    def __init__(self, pairs: Sequence[EditPair], *, shuffle: bool = True, seed: int = 0) -> None:
        if not pairs:
            raise PairsError("EditingSource needs at least one pair")
        self.pairs = list(pairs)
        super().__init__(len(self.pairs), shuffle=shuffle, seed=seed)

    @classmethod
    def from_path(
        cls, path: str | Path, *, split: str | None = DEFAULT_SPLIT, min_size: int = DEFAULT_MIN_SIZE,
        shuffle: bool = True, seed: int = 0,
    ) -> EditingSource:
        """Check the whole source (:func:`load_pairs`: one error listing every problem), then draw ``split``."""
        return cls(load_pairs(path, split=split, min_size=min_size), shuffle=shuffle, seed=seed)

    def group(self, pair: EditPair) -> Group:
        """The rollout group of one pair."""
        person, product = pair.images()
        return Group(key=pair.key, prompt=pair.instruction,
                     conditions={"person_images": person, "product_images": product})

    def item_group(self, index: int) -> Group:
        return self.group(self.pairs[index])

    def fingerprint(self) -> str:
        """A short hash of the pairs' keys in order: a resume can tell that the data changed under it."""
        return hashlib.sha256("\n".join(p.key for p in self.pairs).encode()).hexdigest()[:16]

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "pairs": self.fingerprint()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        saved = state.get("pairs")
        if saved is not None and saved != self.fingerprint():
            warnings.warn("the editing pairs differ from the checkpoint's (rows added, removed or reordered); "
                          "continuing at the saved position of the new list", RuntimeWarning, stacklevel=2)
        super().load_state_dict(state)
