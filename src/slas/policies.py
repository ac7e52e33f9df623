"""The model families a config can name (``model.family``) and the policy class of each.

A new family (an editing pipeline, another text-to-image model) is one entry here: a class that
implements ``slas.rl.protocols.Policy`` and loads with ``from_pretrained(model, sample, keep_reference=)``.
"""

from __future__ import annotations

from typing import Any

from slas.config import ModelConfig, SampleConfig
from slas.editing.kontext import KontextPolicy
from slas.editing.qwen_edit import QwenImageEditPolicy
from slas.t2i.flux import FluxPolicy
from slas.t2i.sd import SDPolicy

POLICIES: dict[str, Any] = {"sd": SDPolicy, "flux": FluxPolicy, "qwen_image_edit": QwenImageEditPolicy,
                            "flux_kontext": KontextPolicy}
EDIT_FAMILIES = frozenset({"qwen_image_edit", "flux_kontext"})
"""Families that edit photos: they train on ``data.pairs``, not on a prompt file."""


def load_policy(model: ModelConfig, sample: SampleConfig, *, keep_reference: bool = False) -> Any:
    """Load ``model.path`` as the policy of ``model.family`` (never downloads; see ``slas.preflight``)."""
    return POLICIES[model.family].from_pretrained(model, sample, keep_reference=keep_reference)
