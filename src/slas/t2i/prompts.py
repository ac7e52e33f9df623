"""Prompt sets from .txt (one prompt a line), .jsonl (a field per record) or .csv (a column), and the
text-to-image data source that draws them as rollout groups."""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from slas.rl.protocols import Group

_DEFAULT_FIELDS = ("prompt", "prompt_en", "text", "caption")


def load_prompts(path: str | Path, field: str | None = None) -> list[str]:
    """Read non-empty prompts from ``path``; ``field`` names the jsonl key or csv column."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"prompt file not found: {p}")
    suffix = p.suffix.lower()
    if suffix == ".txt":
        prompts = [line.strip() for line in p.read_text(encoding="utf-8").splitlines()]
    elif suffix in (".jsonl", ".csv"):
        if suffix == ".jsonl":
            rows = [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
        else:
            with p.open(newline="", encoding="utf-8") as fh:
                rows = list(csv.DictReader(fh))
        keys = rows[0].keys() if rows else []
        key = field or next((k for k in _DEFAULT_FIELDS if k in keys), None)
        if key is None or key not in keys:
            raise ValueError(f"{p}: no prompt field {field or _DEFAULT_FIELDS!r}; fields are {sorted(keys)}")
        prompts = [str(r[key]).strip() for r in rows]
    else:
        raise ValueError(f"{p}: prompt files must be .txt, .jsonl or .csv")
    prompts = [x for x in prompts if x]
    if not prompts:
        raise ValueError(f"{p}: no prompts")
    return prompts


class PromptSource:
    """The text-to-image :class:`~slas.rl.protocols.DataSource`: prompts drawn epoch by epoch (reshuffled
    with a seeded RNG), each a group keyed by its position in the prompt file (so two lines with the same
    text are two items); the position in the epoch is checkpointable."""

    def __init__(self, prompts: list[str], *, shuffle: bool = True, seed: int = 0) -> None:
        if not prompts:
            raise ValueError("PromptSource needs at least one prompt")
        self.prompts = list(prompts)
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0
        self.position = 0
        self._order = self._make_order()

    @classmethod
    def from_file(cls, path: str | Path, field: str | None = None, *, shuffle: bool = True, seed: int = 0) -> PromptSource:
        return cls(load_prompts(path, field), shuffle=shuffle, seed=seed)

    def _make_order(self) -> list[int]:
        order = list(range(len(self.prompts)))
        if self.shuffle:
            random.Random(self.seed * 1_000_003 + self.epoch).shuffle(order)
        return order

    def next(self, k: int) -> list[Group]:
        out = []
        for _ in range(k):
            if self.position >= len(self._order):
                self.epoch += 1
                self.position = 0
                self._order = self._make_order()
            index = self._order[self.position]
            out.append(Group(key=str(index), prompt=self.prompts[index]))
            self.position += 1
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
        self._order = self._make_order()
