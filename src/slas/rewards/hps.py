"""HPS v2.1 (``"hpsv21"``): Human Preference Score v2.1, the preference reward of DanceGRPO / SLAS.

HPS v2.1 is an open_clip ViT-H-14 fine-tuned on human preference pairs. Its reference scorer
(``hpsv2.img_score``) builds ``ViT-H-14``, loads ``HPS_v2.1_compressed.pt`` (``{"state_dict": ...}``),
preprocesses with open_clip's validation transform (224 px, bicubic shortest-side resize, centre crop,
OpenAI mean/std) and scores ``image_features @ text_features.T`` of the L2-normalised features, i.e. the
cosine similarity (no logit scale). This module does the same with batched tensor preprocessing
(:mod:`slas.rewards.preprocess`) and without the ``hpsv2`` package; one value per image, key ``"hpsv21"``.

Weights come from ``checkpoint``: a local file, or a hub repo (default ``xswu/HPSv2``, file
``filename``) that must already be in the Hugging Face cache. Nothing downloads: a missing file raises
:class:`~slas.preflight.PreflightError` naming ``reward hpsv21 options.checkpoint`` and the
``hf download`` command, before anything is loaded.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from slas.preflight import PreflightError, resolve_file
from slas.rewards import preprocess as pp
from slas.rewards.encoders import OpenClipEncoder, check_open_clip_model_name
from slas.rewards.options import check_common_options, checked_factory
from slas.rewards.registry import register

__all__ = ["HPS_CHECKPOINT_FILE", "HPS_REPO", "HPSv21Reward"]

HPS_REPO = "xswu/HPSv2"
HPS_CHECKPOINT_FILE = "HPS_v2.1_compressed.pt"
HPS_MODEL_NAME = "ViT-H-14"


def hps_preprocess() -> dict[str, Any]:
    """HPSv2's validation transform (the size is the model's visual image_size, 224 for ViT-H-14).

    A function, not a constant: the OpenAI mean/std come from transformers, loaded with the reward.
    """
    return {"mean": pp.OPENAI_CLIP_MEAN, "std": pp.OPENAI_CLIP_STD, "interpolation": "bicubic",
            "resize_mode": "shortest"}


class HPSv21Reward:
    """Cosine similarity of HPS v2.1's normalised image and prompt embeddings (key ``"hpsv21"``)."""

    key = "hpsv21"

    def __init__(
        self,
        checkpoint: str = HPS_REPO,
        filename: str = HPS_CHECKPOINT_FILE,
        revision: str | None = None,
        model_name: str = HPS_MODEL_NAME,
        device: str = "auto",
        dtype: str = "float32",
        batch_size: int = 32,
        weights_only: bool = True,
    ) -> None:
        path = _check_hps(
            checkpoint=checkpoint, filename=filename, revision=revision, model_name=model_name,
            device=device, dtype=dtype, batch_size=batch_size,
        )
        self.checkpoint = path
        self.encoder = OpenClipEncoder(
            model_name, path, device=device, dtype=dtype, batch_size=batch_size,
            preprocess=hps_preprocess(), weights_only=weights_only,
        )

    @property
    def model(self):
        """The open_clip model (eval mode, frozen)."""
        return self.encoder.model

    def __call__(self, images: Tensor, prompts: list[str], **conditions: Any) -> dict[str, Tensor]:
        if len(prompts) != images.shape[0]:
            raise ValueError(f"hpsv21: {len(prompts)} prompts for {images.shape[0]} images")
        img = self.encoder.encode_images(images)
        txt = self.encoder.encode_texts(prompts)
        return {self.key: (img * txt).sum(-1).cpu()}


def _check_hps(
    *, checkpoint: str, filename: str, revision: str | None, model_name: str, device: str, dtype: str,
    batch_size: int, **_: Any,
) -> str:
    """Preflight of the ``hpsv21`` options (nothing is loaded); returns the checkpoint's local path."""
    if not isinstance(checkpoint, str) or not checkpoint:
        raise PreflightError(f"reward hpsv21 options.checkpoint: must be a file path or a hub repo id, got {checkpoint!r}")
    path = resolve_file(checkpoint, filename, key="reward hpsv21 options.checkpoint", revision=revision)
    check_common_options("hpsv21", device=device, dtype=dtype, batch_size=batch_size)
    check_open_clip_model_name(model_name, key="reward hpsv21 options.model_name")
    return path


_factory, _preflight = checked_factory("hpsv21", HPSv21Reward, _check_hps)
register("hpsv21", preflight=_preflight)(_factory)
