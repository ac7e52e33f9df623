"""Tiny, randomly initialised CLIP models for the CLIP-family rewards, built fully offline.

* open_clip: :func:`register_tiny_open_clip` adds the architecture :data:`TINY_OPEN_CLIP_MODEL` to
  open_clip's model-config registry at run time (``open_clip.add_model_config`` on a JSON file written
  to a temporary directory). It is a real ``CLIP`` with the real 224 px input, so HPS preprocessing
  runs as for ViT-H-14, but one narrow layer per tower. The tokenizer is open_clip's default
  ``SimpleTokenizer`` (its BPE vocabulary ships inside the package), so ``vocab_size`` stays 49408.
  :func:`save_tiny_open_clip_checkpoint` saves its weights as HPSv2 does (``{"state_dict": ...}``,
  the layout of ``HPS_v2.1_compressed.pt``) or as a bare state dict.
* transformers: :func:`save_tiny_hf_clip` saves a tiny ``CLIPModel`` with ``save_pretrained``,
  together with a ``CLIPImageProcessor`` config (64 px, so the reward must read the size from it)
  and the shared tiny byte-level CLIP tokenizer of :mod:`slas.testing.tiny`.

Every builder is seeded (without disturbing the caller's RNG): the same seed gives identical weights.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import torch

from slas.testing.tiny import CLIP_MAX_LENGTH, build_tiny_clip_tokenizer, seeded

__all__ = [
    "TINY_HF_CLIP_IMAGE_SIZE",
    "TINY_OPEN_CLIP_CONFIG",
    "TINY_OPEN_CLIP_MODEL",
    "build_tiny_open_clip",
    "register_tiny_open_clip",
    "save_tiny_hf_clip",
    "save_tiny_open_clip_checkpoint",
]

TINY_OPEN_CLIP_MODEL = "slas-tiny-ViT-224"
"""open_clip architecture name registered by :func:`register_tiny_open_clip`."""

TINY_OPEN_CLIP_CONFIG: dict[str, Any] = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 224, "layers": 1, "width": 32, "head_width": 16, "patch_size": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
"""ViT-H-14's layout (GELU, 224 px, 77-token SimpleTokenizer context), shrunk: 7x7 patches, width 32."""

TINY_HF_CLIP_IMAGE_SIZE = 64

def register_tiny_open_clip(config_dir: str | Path | None = None) -> str:
    """Make :data:`TINY_OPEN_CLIP_MODEL` known to open_clip (idempotent); return its name.

    The JSON config is written to ``config_dir`` (default: a fresh temporary directory).
    """
    import open_clip

    if TINY_OPEN_CLIP_MODEL in open_clip.list_models():
        return TINY_OPEN_CLIP_MODEL
    d = Path(config_dir) if config_dir is not None else Path(tempfile.mkdtemp(prefix="slas-tiny-open-clip-"))
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{TINY_OPEN_CLIP_MODEL}.json"
    path.write_text(json.dumps(TINY_OPEN_CLIP_CONFIG, indent=2))
    open_clip.add_model_config(path)
    return TINY_OPEN_CLIP_MODEL


def build_tiny_open_clip(seed: int = 0) -> torch.nn.Module:
    """The tiny open_clip ``CLIP`` (random, seeded, eval mode, on the CPU)."""
    import open_clip

    name = register_tiny_open_clip()
    with seeded(seed):
        model = open_clip.create_model(name, pretrained=None)
    return model.eval()


def save_tiny_open_clip_checkpoint(path: str | Path, *, seed: int = 0, wrap: bool = True) -> Path:
    """Save the tiny open_clip model's weights to ``path`` and return it.

    ``wrap=True`` writes ``{"state_dict": ...}`` (HPSv2's ``HPS_v2.1_compressed.pt`` layout); ``False``
    a bare state dict (open_clip's ``open_clip_pytorch_model.bin`` layout). A directory ``path`` gets
    ``HPS_v2.1_compressed.pt`` / ``open_clip_pytorch_model.bin`` inside it.
    """
    out = Path(path)
    if out.is_dir() or not out.suffix:
        out.mkdir(parents=True, exist_ok=True)
        out = out / ("HPS_v2.1_compressed.pt" if wrap else "open_clip_pytorch_model.bin")
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().clone() for k, v in build_tiny_open_clip(seed).state_dict().items()}
    torch.save({"state_dict": state} if wrap else state, out)
    return out


def save_tiny_hf_clip(path: str | Path, *, seed: int = 0) -> Path:
    """Save a tiny transformers ``CLIPModel`` + ``CLIPImageProcessor`` + tokenizer to ``path``; return it.

    Vision: 64 px, patch 16, 1 layer, width 32; text: 1 layer, width 32, 77 positions; projection 16.
    The image processor resizes the shortest side to 64, centre-crops 64x64, OpenAI mean/std.
    """
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    tokenizer = build_tiny_clip_tokenizer()
    side = TINY_HF_CLIP_IMAGE_SIZE
    config = CLIPConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "max_position_embeddings": CLIP_MAX_LENGTH,
            "hidden_act": "quick_gelu",
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config={
            "image_size": side,
            "patch_size": 16,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "hidden_act": "quick_gelu",
        },
        projection_dim=16,
    )
    with seeded(seed):
        model = CLIPModel(config).eval()
    processor = CLIPImageProcessor(
        size={"shortest_edge": side},
        crop_size={"height": side, "width": side},
        do_center_crop=True,
        resample=3,
    )
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
