"""CLIP score (``"clip"``): ``scale * cos(image, prompt)`` in CLIP space, one value per image.

Either CLIP backend of :mod:`slas.rewards.encoders` (``backend="transformers"``: a ``CLIPModel``
directory or cached hub id; ``backend="open_clip"``: an open_clip architecture with its weights, e.g.
DanceGRPO's DFN5B-CLIP-ViT-H-14-378); both give L2-normalised float32 embeddings, so the score is
their cosine similarity times ``scale`` (key ``"clip"``). The models load when the reward is built.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from slas.preflight import PreflightError
from slas.rewards.encoders import (
    DEFAULT_HF_MODEL,
    DEFAULT_OPEN_CLIP_MODEL,
    DEFAULT_OPEN_CLIP_PRETRAINED,
    build_encoder,
)
from slas.rewards.options import check_encoder_options, checked_factory
from slas.rewards.registry import register

__all__ = ["CLIPScoreReward"]


class CLIPScoreReward:
    """``scale * cos(image, prompt)`` in CLIP space; key ``"clip"``, one value per image."""

    key = "clip"

    def __init__(
        self,
        backend: str = "transformers",
        model: str = DEFAULT_HF_MODEL,
        revision: str | None = None,
        model_name: str = DEFAULT_OPEN_CLIP_MODEL,
        pretrained: str = DEFAULT_OPEN_CLIP_PRETRAINED,
        filename: str | None = None,
        preprocess: Mapping[str, Any] | None = None,
        scale: float = 1.0,
        device: str = "auto",
        dtype: str = "float32",
        batch_size: int = 32,
        weights_only: bool = True,
    ) -> None:
        resolved = _check_clip(
            backend=backend, model=model, revision=revision, model_name=model_name, pretrained=pretrained,
            filename=filename, preprocess=preprocess, scale=scale, device=device, dtype=dtype, batch_size=batch_size,
        )
        self.encoder = build_encoder(
            resolved, device=device, dtype=dtype, batch_size=batch_size, preprocess=preprocess,
            weights_only=weights_only,
        )
        self.scale = float(scale)

    def __call__(self, images: Tensor, prompts: list[str], **conditions: Any) -> dict[str, Tensor]:
        if len(prompts) != images.shape[0]:
            raise ValueError(f"clip: {len(prompts)} prompts for {images.shape[0]} images")
        img = self.encoder.encode_images(images)
        txt = self.encoder.encode_texts(prompts)
        return {self.key: (self.scale * (img * txt).sum(-1)).cpu()}


def _check_clip(
    *, backend: str, model: str, revision: str | None, model_name: str, pretrained: str, filename: str | None,
    preprocess: Mapping[str, Any] | None, scale: float, device: str, dtype: str, batch_size: int, **_: Any,
) -> dict[str, Any]:
    """Preflight of the ``clip`` options; returns the resolved encoder files."""
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise PreflightError(f"reward clip options.scale: must be a number, got {scale!r}")
    return check_encoder_options(
        "clip", backend=backend, model=model, revision=revision, model_name=model_name, pretrained=pretrained,
        filename=filename, preprocess=preprocess, device=device, dtype=dtype, batch_size=batch_size,
    )


_factory, _preflight = checked_factory("clip", CLIPScoreReward, _check_clip)
register("clip", preflight=_preflight)(_factory)
