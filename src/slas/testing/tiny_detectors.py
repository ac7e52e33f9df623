"""A tiny, randomly initialised COCO Mask2Former for the GenEval ``mask2former`` detector, built fully offline.

:func:`save_tiny_mask2former` writes what ``facebook/mask2former-swin-small-coco-instance`` holds (a
``Mask2FormerForUniversalSegmentation`` with a Swin backbone and the 80 COCO classes as ``id2label``, plus its
``Mask2FormerImageProcessor``), shrunk to one narrow layer per stage, 8 queries and 64 px inputs.

Random weights give every (query, class) pair a probability near 1/81, far below GenEval's 0.3 confidence,
so nothing would ever be detected and the colour path would never run. ``confident`` makes the class head
predict that one class for every query (zero weights, a large bias), so the masks, boxes, thresholds and
CLIP colours all run on real tensors while the model stays random elsewhere.
"""

from __future__ import annotations

from pathlib import Path

from slas.testing.tiny import seeded

TINY_MASK2FORMER_IMAGE_SIZE = 64

__all__ = ["TINY_MASK2FORMER_IMAGE_SIZE", "build_tiny_mask2former", "save_tiny_mask2former"]


def build_tiny_mask2former(*, seed: int = 0, confident: str | None = None):
    """The tiny COCO ``Mask2FormerForUniversalSegmentation`` (random, seeded, eval mode, on the CPU)."""
    import torch
    from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, SwinConfig

    from slas.eval.detectors import COCO_CLASSES

    backbone = SwinConfig(image_size=TINY_MASK2FORMER_IMAGE_SIZE, patch_size=4, embed_dim=16, depths=[1, 1, 1, 1],
                          num_heads=[1, 1, 1, 1], window_size=4, out_features=["stage1", "stage2", "stage3", "stage4"])
    config = Mask2FormerConfig(
        backbone_config=backbone, hidden_dim=32, mask_feature_size=32, feature_size=32, encoder_layers=1,
        decoder_layers=2, num_queries=8, encoder_feedforward_dim=64, dim_feedforward=64, num_attention_heads=2,
        id2label=dict(enumerate(COCO_CLASSES)), label2id={name: i for i, name in enumerate(COCO_CLASSES)},
    )
    with seeded(seed):
        model = Mask2FormerForUniversalSegmentation(config).eval()
    if confident is not None:
        head = model.class_predictor
        with torch.no_grad():
            head.weight.zero_()
            head.bias.fill_(-10.0)
            head.bias[COCO_CLASSES.index(confident)] = 10.0
    return model


def save_tiny_mask2former(path: str | Path, *, seed: int = 0, confident: str | None = None) -> Path:
    """Save the tiny model with ``save_pretrained`` plus its 64 px ``Mask2FormerImageProcessor``; return ``path``."""
    from transformers import Mask2FormerImageProcessor

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    build_tiny_mask2former(seed=seed, confident=confident).save_pretrained(out)
    side = TINY_MASK2FORMER_IMAGE_SIZE
    Mask2FormerImageProcessor(size={"shortest_edge": side, "longest_edge": side}, size_divisor=32).save_pretrained(out)
    return out
