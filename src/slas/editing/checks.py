"""The row and image checks of editing pairs: every way a row can be unusable, one line each.

A problem line always starts with where it is (``<file>:<line>`` for a row, the image file for a photo of a
folder layout), then the field, then what is wrong and, where there is one, the fix. Checks never stop at
the first problem: a team fixing a 5,000-row file wants the whole list in one run, not one line per run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

from slas.config import DEFAULT_MIN_IMAGE_SIZE, PairSplit
from slas.errors import SlasError, one_line
from slas.images import load_image

DEFAULT_INSTRUCTION = "The person in Figure 1 is holding the commodity in Figure 2"
"""The paper's fixed instruction, used for every row that does not give its own."""

SPLITS: tuple[str, ...] = get_args(PairSplit)
DEFAULT_SPLIT = "train"
"""The split of a row that names none (so a file without splits trains on every row)."""

DEFAULT_MIN_SIZE = DEFAULT_MIN_IMAGE_SIZE
"""Shortest image side accepted by default, in pixels: below it a photo holds too little of a hand or a
product for the edit model or the judge to see (and is usually a thumbnail saved by mistake)."""

REQUIRED_FIELDS = ("id", "person", "product")
OPTIONAL_FIELDS = ("instruction", "description", "split")
FIELDS = REQUIRED_FIELDS + OPTIONAL_FIELDS


class PairsError(SlasError, ValueError):
    """Editing pairs that cannot be trained on: one line per problem (:attr:`problems`)."""

    @property
    def problems(self) -> list[str]:
        return [line for line in str(self).splitlines() if line.strip()]


@dataclass
class RowFields:
    """The typed fields of one row that passed the field checks (paths still as written)."""

    id: str
    person: str
    product: str
    instruction: str = DEFAULT_INSTRUCTION
    description: str | None = None
    split: str = DEFAULT_SPLIT


def check_fields(record: dict[str, Any], where: str, *, unknown_ok: bool = False) -> tuple[RowFields | None, list[str]]:
    """The row's fields, or ``None`` and every problem with them (missing, unknown, wrong type, empty, bad split).

    ``id`` may be a string or a whole number (SKU-style ids exported as numbers); every other field is a
    string. ``null`` counts as absent. ``unknown_ok`` skips the unknown-key check (a CSV's header is checked
    once instead of every row).
    """
    problems: list[str] = []
    if not unknown_ok:
        problems += [f"{where}: unknown field {key!r}; fields are {', '.join(FIELDS)}"
                     for key in record if key not in FIELDS]
    values: dict[str, str] = {}
    for name in FIELDS:
        value = record.get(name)
        if value is None:
            if name in REQUIRED_FIELDS:
                problems.append(f"{where}: missing field {name!r}; every row needs {', '.join(REQUIRED_FIELDS)}")
            continue
        if name == "id" and isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            kind = "a string or a whole number" if name == "id" else "a string"
            problems.append(f"{where}: field {name!r} must be {kind}, got {type(value).__name__} {value!r:.40}")
            continue
        if not value.strip():
            fix = "give a value" if name in REQUIRED_FIELDS else "give a value or leave the field out"
            problems.append(f"{where}: field {name!r} is empty; {fix}")
            continue
        values[name] = value.strip()
    split = values.get("split")
    if split is not None and split not in SPLITS:
        problems.append(f"{where}: unknown split {split!r}; use one of {', '.join(SPLITS)} (or leave it out: {DEFAULT_SPLIT})")
    if problems:
        return None, problems
    return RowFields(**values), []


@dataclass
class ImageChecker:
    """Checks image files once each (a person photo used by 200 rows is decoded once) and remembers the
    answer: ``None`` for a usable image, else the one-line problem naming the file."""

    min_size: int = DEFAULT_MIN_SIZE
    _seen: dict[Path, str | None] = field(default_factory=dict)

    def problem(self, path: Path) -> str | None:
        """Why ``path`` cannot be used (missing, unreadable, truncated, too large, too small), or ``None``."""
        try:
            key = path.resolve()
        except (OSError, ValueError) as exc:  # a NUL byte in the name, a symlink loop
            return f"{str(path)!r:.200}: not a usable path ({one_line(exc)})"
        if key not in self._seen:
            self._seen[key] = self._check(path)
        return self._seen[key]

    def _check(self, path: Path) -> str | None:
        try:
            image = load_image(path)  # refuses missing, empty, non-image, truncated and oversized files
        except SlasError as exc:
            return one_line(exc)
        except (OSError, ValueError) as exc:  # unreadable (permissions, name too long) or vanished meanwhile
            return f"{str(path)!r:.200}: cannot be read ({one_line(exc)})"
        height, width = image.shape[-2:]
        if min(height, width) < self.min_size:
            return (f"{path}: {width}x{height} px is smaller than {self.min_size} px on its shortest side; use a larger "
                    "photo (or lower data.min_image_size / --min-size)")
        return None
