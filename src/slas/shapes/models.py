"""The shapes world's models, as configs (data) and builders: a tiny FLUX.1-style text-to-image pipeline
and the two proxy-reward towers (a transformers CLIP and an open_clip CLIP for the preference scorer).

Geometry: 32x32 RGB -> AutoencoderKL with two levels (``vae_scale_factor`` 2) -> 16x16x4 latent ->
FLUX packs 2x2 -> 64 image tokens of 16 channels. Text: CLIP (pooled) + T5 (sequence) encoders whose
tokenizers hold every word of the world as one token. No guidance embedding and no CFG: the
pipeline samples with plain conditional flow matching, as the RL policy does.
"""

from __future__ import annotations

from typing import Any

from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
from transformers import (
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPVisionConfig,
    T5Config,
    T5EncoderModel,
)

from slas.rewards.preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from slas.shapes.prompts import metadata
from slas.tokenization import build_clip_tokenizer, build_t5_tokenizer

IMAGE_SIZE = 32
TEXT_MAX_LENGTH = 24  # longest world prompt: 13 tokens + specials

VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
    "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"],
    "block_out_channels": [32, 64],
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 16,
    "sample_size": IMAGE_SIZE,
    "use_quant_conv": False,
    "use_post_quant_conv": False,
    "scaling_factor": 1.0,  # set from the encoded data by the pretraining script
    "shift_factor": 0.0,
}
TRANSFORMER_CONFIG: dict[str, Any] = {
    "patch_size": 1,
    "in_channels": 16,
    "num_layers": 2,
    "num_single_layers": 4,
    "attention_head_dim": 32,
    "num_attention_heads": 4,
    "joint_attention_dim": 64,
    "pooled_projection_dim": 64,
    "guidance_embeds": False,
    "axes_dims_rope": [8, 12, 12],
}
T2I_CLIP_TEXT_CONFIG: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "projection_dim": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": TEXT_MAX_LENGTH,
    "hidden_act": "quick_gelu",
}
T5_CONFIG: dict[str, Any] = {
    "d_model": 64,
    "d_kv": 16,
    "d_ff": 128,
    "num_layers": 2,
    "num_heads": 4,
    "relative_attention_num_buckets": 16,
    "relative_attention_max_distance": 32,
    "feed_forward_proj": "gated-gelu",
    "dropout_rate": 0.0,
    "is_encoder_decoder": False,
}
SCHEDULER_CONFIG: dict[str, Any] = {"num_train_timesteps": 1000, "shift": 1.0, "use_dynamic_shifting": False}

# The "CLIP score" proxy: a transformers CLIPModel at the world's resolution.
PROXY_CLIP_TEXT: dict[str, Any] = {
    "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
    "max_position_embeddings": TEXT_MAX_LENGTH,
}
PROXY_CLIP_VISION: dict[str, Any] = {
    "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
    "image_size": IMAGE_SIZE, "patch_size": 4,
}
# The "HPS" proxy: an open_clip CLIP (its SimpleTokenizer, so vocab 49408), loaded via ``local-dir:``.
PREFERENCE_OPEN_CLIP_CONFIG: dict[str, Any] = {
    "model_cfg": {
        "embed_dim": 64,
        "vision_cfg": {"image_size": IMAGE_SIZE, "layers": 2, "width": 64, "head_width": 16, "patch_size": 4},
        "text_cfg": {"context_length": TEXT_MAX_LENGTH, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
    },
    "preprocess_cfg": {"mean": list(OPENAI_CLIP_MEAN), "std": list(OPENAI_CLIP_STD)},
}


def world_words() -> list[str]:
    """Every word of every world prompt (train and test), sorted."""
    return sorted({w for split in ("train", "test") for r in metadata(split) for w in r["prompt"].split()})


def build_tokenizers():
    """The world's CLIP and T5 tokenizers (each world word one token)."""
    words = world_words()
    return (
        build_clip_tokenizer(TEXT_MAX_LENGTH, words=words),
        build_t5_tokenizer(TEXT_MAX_LENGTH, words=words),
    )


def build_vae() -> AutoencoderKL:
    return AutoencoderKL(**VAE_CONFIG)


def build_pipeline(vae: AutoencoderKL) -> FluxPipeline:
    """A freshly initialised world pipeline around a (trained) ``vae``."""
    tokenizer, tokenizer_2 = build_tokenizers()
    clip = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id, **T2I_CLIP_TEXT_CONFIG,
        )
    )
    t5 = T5EncoderModel(
        T5Config(
            vocab_size=len(tokenizer_2), pad_token_id=tokenizer_2.pad_token_id, eos_token_id=tokenizer_2.eos_token_id,
            decoder_start_token_id=tokenizer_2.pad_token_id, **T5_CONFIG,
        )
    )
    return FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIG),
        vae=vae,
        text_encoder=clip,
        tokenizer=tokenizer,
        text_encoder_2=t5,
        tokenizer_2=tokenizer_2,
        transformer=FluxTransformer2DModel(**TRANSFORMER_CONFIG),
    )


def build_proxy_clip():
    """The CLIP-score proxy (``CLIPModel``), its tokenizer and image processor."""
    tokenizer, _ = build_tokenizers()
    text = CLIPTextConfig(
        vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, **PROXY_CLIP_TEXT,
    )
    config = CLIPConfig(text_config=text.to_dict(), vision_config=CLIPVisionConfig(**PROXY_CLIP_VISION).to_dict(),
                        projection_dim=64)
    processor = CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        image_mean=list(OPENAI_CLIP_MEAN), image_std=list(OPENAI_CLIP_STD),
    )
    return CLIPModel(config), tokenizer, processor
