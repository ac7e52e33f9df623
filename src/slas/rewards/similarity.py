"""Image similarity (``"image_similarity"``): CLIP image-image cosine to a reference image.

For editing tasks (e.g. product-in-hand) the edited image should keep the reference's identity: the
reward is the cosine similarity of the CLIP image embeddings of each generated image and its
reference (condition ``reference_images``: a tensor ``[N, 3, H, W]`` in [0, 1], or a list of ``N``
PIL images, ``[3, H, W]`` tensors or image paths, which may differ in size). Either CLIP backend of
:mod:`slas.rewards.encoders` (the ``clip`` reward's options and encoders); key ``"image_similarity"``.

``options.condition`` names the condition to compare with. For product-in-hand editing the edit
should show the product, so ``condition: product_images`` (the editing data's product photo per
sample) scores each edit against its product::

    - name: image_similarity
      weight: 0.5
      options: {model: openai/clip-vit-large-patch14, condition: product_images}

(the whole edit is compared with the whole product photo; the person's preservation is the separate
``person_preservation`` reward, :mod:`slas.rewards.preservation`).
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
from slas.rewards.options import check_encoder_options, checked_factory, condition_images
from slas.rewards.registry import register

__all__ = ["REFERENCE_CONDITION", "ImageSimilarityReward"]

REFERENCE_CONDITION = "reference_images"


class ImageSimilarityReward:
    """``cos(clip(image), clip(reference))`` per image (key ``"image_similarity"``)."""

    key = "image_similarity"

    def __init__(
        self,
        backend: str = "transformers",
        model: str = DEFAULT_HF_MODEL,
        revision: str | None = None,
        model_name: str = DEFAULT_OPEN_CLIP_MODEL,
        pretrained: str = DEFAULT_OPEN_CLIP_PRETRAINED,
        filename: str | None = None,
        preprocess: Mapping[str, Any] | None = None,
        condition: str = REFERENCE_CONDITION,
        device: str = "auto",
        dtype: str = "float32",
        batch_size: int = 32,
        weights_only: bool = True,
    ) -> None:
        resolved = _check_similarity(
            backend=backend, model=model, revision=revision, model_name=model_name, pretrained=pretrained,
            filename=filename, preprocess=preprocess, condition=condition, device=device, dtype=dtype,
            batch_size=batch_size,
        )
        self.condition = condition
        self.encoder = build_encoder(
            resolved, device=device, dtype=dtype, batch_size=batch_size, preprocess=preprocess,
            weights_only=weights_only,
        )

    def __call__(self, images: Tensor, prompts: list[str], **conditions: Any) -> dict[str, Tensor]:
        refs = condition_images(conditions, self.condition, images.shape[0], reward="image_similarity",
                                what="reference images")
        ref = self.encoder.encode_images(refs)
        gen = self.encoder.encode_images(images)
        return {self.key: (gen * ref).sum(-1).cpu()}


def _check_similarity(
    *, backend: str, model: str, revision: str | None, model_name: str, pretrained: str, filename: str | None,
    preprocess: Mapping[str, Any] | None, condition: str, device: str, dtype: str, batch_size: int, **_: Any,
) -> dict[str, Any]:
    """Preflight of the ``image_similarity`` options; returns the resolved encoder files."""
    if not isinstance(condition, str) or not condition:
        raise PreflightError(f"reward image_similarity options.condition: must be a condition name, got {condition!r}")
    return check_encoder_options(
        "image_similarity", backend=backend, model=model, revision=revision, model_name=model_name,
        pretrained=pretrained, filename=filename, preprocess=preprocess, device=device, dtype=dtype,
        batch_size=batch_size,
    )


_factory, _preflight = checked_factory("image_similarity", ImageSimilarityReward, _check_similarity)
register("image_similarity", preflight=_preflight)(_factory)
