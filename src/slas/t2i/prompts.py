"""Prompt sets from .txt (one prompt a line), .jsonl (a field per record) or .csv (a column), and the
text-to-image data source that draws them as rollout groups."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from slas.config import read_text_file
from slas.errors import SlasError
from slas.rl.protocols import Group
from slas.rl.sources import EpochSource

_DEFAULT_FIELDS = ("prompt", "prompt_en", "text", "caption")
_FORMATS = ".txt (one prompt a line), .jsonl (one JSON object a line) or .csv (with a header row)"


class PromptFileError(SlasError, ValueError):
    """A prompt file that holds no usable prompts (empty, blank, binary, malformed); the message names it."""


class PromptFileNotFound(SlasError, FileNotFoundError):
    """The prompt file is not there."""


def load_prompts(path: str | Path, field: str | None = None) -> list[str]:
    """Read non-empty prompts from ``path``; ``field`` names the jsonl key or csv column.

    Every way a file can fail (missing, binary, malformed, empty) is one line naming the file and the fix,
    so a wrong path in ``data.prompts`` is refused before a run starts rather than deep in a parser.
    """
    p = Path(path)
    if not p.is_file():
        raise PromptFileNotFound(f"prompt file not found: {p}")
    suffix = p.suffix.lower()
    if suffix not in (".txt", ".jsonl", ".csv"):
        raise PromptFileError(f"{p}: prompt files must be {_FORMATS}")
    text = read_text_file(p, "prompt file")
    if suffix == ".txt":
        prompts = [line.strip() for line in text.splitlines()]
    else:
        rows = _jsonl_rows(p, text) if suffix == ".jsonl" else _csv_rows(p, text)
        prompts = _field_values(p, rows, field)
    prompts = [x for x in prompts if x]
    if not prompts:
        raise PromptFileError(f"prompt file {p} holds no prompts (empty or blank); write {_FORMATS}")
    return prompts


def _jsonl_rows(p: Path, text: str) -> list[dict]:
    """One JSON object per non-blank line; a line that is not one is named by its number."""
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise PromptFileError(f"{p}: line {number} is not JSON ({exc.msg}); write one JSON object a line") from None
        if not isinstance(row, dict):
            raise PromptFileError(f"{p}: line {number} is not a JSON object; write one object a line, as "
                                  '{"prompt": "..."}')
        rows.append(row)
    return rows


def _csv_rows(p: Path, text: str) -> list[dict]:
    """The rows of a CSV file with a header; a file the csv module cannot read is one line naming it."""
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        return list(reader)
    except csv.Error as exc:
        raise PromptFileError(f"{p} is not readable CSV ({exc}); write a header row, then one row a prompt") from None


def _field_values(p: Path, rows: list[dict], field: str | None) -> list[str]:
    """The prompt field of every row: ``field``, else the first of the usual names the first row has."""
    keys = rows[0].keys() if rows else []
    key = field or next((k for k in _DEFAULT_FIELDS if k in keys), None)
    if key is None or key not in keys:
        raise PromptFileError(f"{p}: no prompt field {field or _DEFAULT_FIELDS!r}; fields are {sorted(keys)}")
    missing = next((i for i, r in enumerate(rows, start=1) if r.get(key) is None), None)
    if missing is not None:
        raise PromptFileError(f"{p}: record {missing} has no {key!r}; give every record a prompt")
    return [str(r[key]).strip() for r in rows]


class PromptSource(EpochSource):
    """The text-to-image :class:`~slas.rl.protocols.DataSource`: prompts drawn epoch by epoch (reshuffled
    with a seeded RNG), each a group keyed by its position in the prompt file (so two lines with the same
    text are two items); the position in the epoch is checkpointable."""

    def __init__(self, prompts: list[str], *, shuffle: bool = True, seed: int = 0) -> None:
        if not prompts:
            raise ValueError("PromptSource needs at least one prompt")
        self.prompts = list(prompts)
        super().__init__(len(self.prompts), shuffle=shuffle, seed=seed)

    @classmethod
    def from_file(cls, path: str | Path, field: str | None = None, *, shuffle: bool = True, seed: int = 0) -> PromptSource:
        return cls(load_prompts(path, field), shuffle=shuffle, seed=seed)

    def item_group(self, index: int) -> Group:
        return Group(key=str(index), prompt=self.prompts[index])
