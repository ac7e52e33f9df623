"""Data sources drawn epoch by epoch: the shared half of the prompt and editing-pair sources.

Items are visited in a seeded order that is reshuffled every epoch; the (epoch, position) pair is all the
state a checkpoint needs, because the order of any epoch can be rebuilt from the seed. Every rank draws the
same global list (``slas.rl.protocols.DataSource``), so ranks agree without talking.
"""

from __future__ import annotations

import abc
import random
from collections.abc import Mapping
from typing import Any

from slas.rl.protocols import Group


class EpochSource(abc.ABC):
    """``size`` items in a seeded order per epoch (unshuffled with ``shuffle=False``); subclasses say what
    group item ``index`` is."""

    def __init__(self, size: int, *, shuffle: bool = True, seed: int = 0) -> None:
        self.size = size
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0
        self.position = 0
        self._order = self._make_order()

    @abc.abstractmethod
    def item_group(self, index: int) -> Group:
        """The rollout group of item ``index``."""

    def _make_order(self) -> list[int]:
        order = list(range(self.size))
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
            out.append(self.item_group(self._order[self.position]))
            self.position += 1
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
        self._order = self._make_order()
