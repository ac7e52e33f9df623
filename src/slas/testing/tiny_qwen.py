"""A tiny, randomly initialised Qwen2.5-VL (model + processor) built fully offline.

:func:`save_tiny_qwen_vl` writes a directory that ``Qwen2_5_VLForConditionalGeneration.from_pretrained``
and ``AutoProcessor.from_pretrained`` load exactly like ``Qwen/Qwen2.5-VL-7B-Instruct``: ``config.json``
+ weights, a ``Qwen2VLImageProcessor`` config (patch 14, merge 2, small min/max pixels), a
``Qwen2Tokenizer`` and the Qwen2.5-VL chat template. Used by the MLLM-judge reward tests.

The tokenizer is a byte-level BPE over the 256-character byte alphabet with exactly three merges
(``Y e``, ``Ye s``, ``N o``), so that the judge's answer tokens ``"0"`` .. ``"5"``, ``"Yes"`` and ``"No"``
are single tokens as in the real Qwen vocabulary, plus the Qwen special tokens (``<|endoftext|>``,
``<|im_start|>``, ``<|im_end|>``, ``<|vision_start|>``, ``<|image_pad|>`` ...) as added tokens in the
real order.

Transformers 5 notes:

* ``Qwen2TokenizerFast`` is an alias of ``Qwen2Tokenizer`` (``tokenizers``-backed). On
  ``from_pretrained`` it does not load ``tokenizer.json`` verbatim: it extracts the BPE vocab and
  merges and re-runs ``Qwen2Tokenizer.__init__``, which rebuilds its own NFC normaliser, Qwen split
  regex + ``ByteLevel(use_regex=False)`` pre-tokeniser and ``ByteLevel`` decoder. The backend built
  here mirrors that pipeline exactly, so ids survive the round trip (the tests check it).
* Qwen2.5-VL uses the Qwen2-VL image processor (``Qwen2VLImageProcessor``, torchvision backend);
  ``min_pixels`` / ``max_pixels`` are stored as ``size = {"shortest_edge", "longest_edge"}``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from slas.testing.tiny import seeded

__all__ = [
    "QWEN2_5_VL_CHAT_TEMPLATE",
    "QWEN_SPECIAL_TOKENS",
    "TINY_QWEN_MAX_PIXELS",
    "TINY_QWEN_MIN_PIXELS",
    "build_tiny_qwen_tokenizer",
    "build_tiny_qwen_vl",
    "save_tiny_qwen_vl",
]

QWEN2_5_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
"""The chat template shipped with Qwen/Qwen2.5-VL-*-Instruct (``chat_template.json``)."""

# Qwen2.5-VL's added tokens in id order (151643 ...): (content, special).
QWEN_SPECIAL_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
)

# The three merges that make the judge's answer words single tokens.
_MERGES = [("Y", "e"), ("Ye", "s"), ("N", "o")]

# Same split regex as transformers' Qwen2Tokenizer (it rebuilds exactly this pipeline on reload).
_QWEN_SPLIT_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

TINY_QWEN_MIN_PIXELS = 28 * 28 * 4
"""Processor ``min_pixels``: at least 2x2 merged tokens (56x56 px) per image."""
TINY_QWEN_MAX_PIXELS = 28 * 28 * 16
"""Processor ``max_pixels``: at most 16 merged tokens (e.g. 112x112 px) per image."""

TEXT_HIDDEN = 64


def build_tiny_qwen_tokenizer() -> Any:
    """``Qwen2Tokenizer``: 256 byte-level characters + ``Ye``, ``Yes``, ``No`` (259 ids), then the added tokens.

    ``<|endoftext|>`` is pad/unk, ``<|im_end|>`` eos (as Qwen2.5-VL-Instruct); padding side left.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import BPE
    from transformers import Qwen2TokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    for a, b in _MERGES:
        vocab[a + b] = len(vocab)
    backend = Tokenizer(
        BPE(
            vocab=vocab,
            merges=list(_MERGES),
            dropout=None,
            unk_token=None,
            continuing_subword_prefix="",
            end_of_word_suffix="",
            fuse_unk=False,
            byte_fallback=False,
        )
    )
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_QWEN_SPLIT_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    backend.add_tokens([AddedToken(t, special=s, normalized=False) for t, s in QWEN_SPECIAL_TOKENS])
    tok = Qwen2TokenizerFast(
        tokenizer_object=backend,
        unk_token=None,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        padding_side="left",
        model_max_length=32768,
    )
    return tok


def _tiny_config(tokenizer: Any) -> Any:
    from transformers import Qwen2_5_VLConfig

    ids = tokenizer.convert_tokens_to_ids
    return Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": TEXT_HIDDEN,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 4096,
            "rms_norm_eps": 1e-6,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 1000000.0,
                "mrope_section": [2, 3, 3],  # sums to head_dim / 2
            },
            "bos_token_id": ids("<|endoftext|>"),
            "eos_token_id": ids("<|im_end|>"),
            "pad_token_id": ids("<|endoftext|>"),
        },
        vision_config={
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 56,
            "fullatt_block_indexes": [1],
            "out_hidden_size": TEXT_HIDDEN,
            "tokens_per_second": 2,
        },
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
        tie_word_embeddings=False,
    )


def build_tiny_qwen_vl(seed: int = 0) -> tuple[Any, Any]:
    """``(Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor)``: random, seeded, eval mode, CPU.

    Text: hidden 64, 2 layers, 4 heads (2 KV heads) of 16, mrope sections (2, 3, 3). Vision: depth 2,
    hidden 32, patch 14, spatial merge 2, output 64. Processor: min/max pixels
    :data:`TINY_QWEN_MIN_PIXELS` / :data:`TINY_QWEN_MAX_PIXELS`.
    """
    from transformers import (
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    tokenizer = build_tiny_qwen_tokenizer()
    config = _tiny_config(tokenizer)
    with seeded(seed):
        model = Qwen2_5_VLForConditionalGeneration(config)
        # Randomly initialised logits are nearly flat; a wider lm_head makes the judge's answer
        # distribution (and so any mismatch in a test) clearly visible.
        torch.nn.init.normal_(model.lm_head.weight, std=0.5)
    model.eval()
    model.generation_config.pad_token_id = config.text_config.pad_token_id
    model.generation_config.eos_token_id = config.text_config.eos_token_id
    image_processor = Qwen2VLImageProcessor(
        min_pixels=TINY_QWEN_MIN_PIXELS,
        max_pixels=TINY_QWEN_MAX_PIXELS,
        patch_size=14,
        temporal_patch_size=2,
        merge_size=2,
    )
    video_processor = Qwen2VLVideoProcessor(
        min_pixels=TINY_QWEN_MIN_PIXELS,
        max_pixels=TINY_QWEN_MAX_PIXELS * 2,
        patch_size=14,
        temporal_patch_size=2,
        merge_size=2,
    )
    processor = Qwen2_5_VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=QWEN2_5_VL_CHAT_TEMPLATE,
    )
    return model, processor


def save_tiny_qwen_vl(path: str | Path, seed: int = 0) -> Path:
    """Build the tiny Qwen2.5-VL and ``save_pretrained`` model + processor to ``path``; return the path."""
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    model, processor = build_tiny_qwen_vl(seed)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out
