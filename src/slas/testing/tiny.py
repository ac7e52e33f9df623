"""Tiny, randomly initialised diffusers pipelines built fully offline.

Used by the unit tests and the CPU benchmark. Nothing here touches the network or the model hub:
tokenizers are assembled from the 256-character byte-level alphabet with the ``tokenizers``
library and wrapped in the transformers tokenizer classes the real pipelines use; every model is
built from an explicit config and seeded, so the same seed always yields identical weights.

Geometry shared by both pipelines: a ``32x32`` image maps to an ``8x8x4`` latent
(``vae_scale_factor == 4``). FLUX packs that latent 2x2 into 16 tokens of 16 channels.

Tokenizers come from :mod:`slas.tokenization` (byte-level, no words).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTokenizerFast,
    T5Config,
    T5EncoderModel,
    T5TokenizerFast,
)

from slas.tokenization import CLIP_MAX_LENGTH, T5_MAX_LENGTH
from slas.tokenization import build_clip_tokenizer as build_tiny_clip_tokenizer
from slas.tokenization import build_t5_tokenizer as build_tiny_t5_tokenizer

__all__ = [
    "CLIP_MAX_LENGTH",
    "FLUX_DEV_SCHEDULER_CONFIG",
    "SD14_DDIM_SCHEDULER_CONFIG",
    "T5_MAX_LENGTH",
    "TINY_IMAGE_SIZE",
    "TINY_LATENT_CHANNELS",
    "TINY_LATENT_SIZE",
    "build_tiny_clip_text_encoder",
    "build_tiny_clip_tokenizer",
    "build_tiny_flux_pipeline",
    "build_tiny_sd_pipeline",
    "build_tiny_t5_text_encoder",
    "build_tiny_t5_tokenizer",
    "save_tiny_pipeline",
]

TINY_IMAGE_SIZE = 32
"""Intended image side for both tiny pipelines."""
TINY_LATENT_SIZE = 8
"""Latent side for a :data:`TINY_IMAGE_SIZE` image (``vae_scale_factor == 4``)."""
TINY_LATENT_CHANNELS = 4

SD14_DDIM_SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "prediction_type": "epsilon",
}
"""DDIM with the Stable Diffusion 1.4 training schedule."""

FLUX_DEV_SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": True,
    "base_shift": 0.5,
    "max_shift": 1.15,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
}
"""FlowMatchEulerDiscreteScheduler as configured for FLUX.1-dev."""

# Fixed per-component seed offsets, so that each component's weights depend only on (seed, component).
_SEED_OFFSETS = {"unet": 0, "vae": 1, "clip": 2, "t5": 3, "transformer": 4}

@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed torch's CPU RNG for a block without disturbing the caller's RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def _seeded(seed: int, component: str) -> Iterator[None]:
    """Seed one component of a tiny pipeline (each component its own stream)."""
    with seeded(seed * len(_SEED_OFFSETS) + _SEED_OFFSETS[component]):
        yield


# ------------------------------------------------------------------------------------------ text encoders


def build_tiny_clip_text_encoder(tokenizer: CLIPTokenizerFast, seed: int = 0) -> CLIPTextModel:
    """CLIP text encoder: hidden 32, 2 layers, 4 heads, 77 positions, pooled output dim 32."""
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        projection_dim=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=CLIP_MAX_LENGTH,
        hidden_act="quick_gelu",
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with _seeded(seed, "clip"):
        model = CLIPTextModel(config)
    return model.eval()


def build_tiny_t5_text_encoder(tokenizer: T5TokenizerFast, seed: int = 0) -> T5EncoderModel:
    """T5 v1.1-style encoder: d_model 32, 2 layers, 4 heads x 8, gated-gelu FFN 64."""
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=32,
        feed_forward_proj="gated-gelu",
        dropout_rate=0.0,
        is_encoder_decoder=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    with _seeded(seed, "t5"):
        model = T5EncoderModel(config)
    return model.eval()


# ------------------------------------------------------------------------------------------------- VAEs


def _build_tiny_vae(seed: int, **overrides: Any) -> AutoencoderKL:
    """3-level AutoencoderKL (vae_scale_factor 4) with 4 latent channels."""
    kwargs: dict[str, Any] = {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ("DownEncoderBlock2D",) * 3,
        "up_block_types": ("UpDecoderBlock2D",) * 3,
        "block_out_channels": (16, 32, 32),
        "layers_per_block": 1,
        "latent_channels": TINY_LATENT_CHANNELS,
        "norm_num_groups": 8,
        "sample_size": TINY_IMAGE_SIZE,
    }
    kwargs.update(overrides)
    with _seeded(seed, "vae"):
        vae = AutoencoderKL(**kwargs)
    return vae.eval()


# -------------------------------------------------------------------------------------------- pipelines


def build_tiny_sd_pipeline(seed: int = 0) -> StableDiffusionPipeline:
    """Tiny Stable-Diffusion-1.x pipeline: 32x32 images, 8x8x4 latents, DDIM with the SD 1.4 schedule."""
    tokenizer = build_tiny_clip_tokenizer()
    text_encoder = build_tiny_clip_text_encoder(tokenizer, seed)
    with _seeded(seed, "unet"):
        unet = UNet2DConditionModel(
            sample_size=TINY_LATENT_SIZE,
            in_channels=TINY_LATENT_CHANNELS,
            out_channels=TINY_LATENT_CHANNELS,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            block_out_channels=(32, 64),
            layers_per_block=1,
            cross_attention_dim=32,
            attention_head_dim=2,  # legacy diffusers name: this is the number of heads
            norm_num_groups=32,
        ).eval()
    vae = _build_tiny_vae(seed, scaling_factor=0.18215)
    scheduler = DDIMScheduler(**SD14_DDIM_SCHEDULER_CONFIG)
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def build_tiny_flux_pipeline(seed: int = 0) -> FluxPipeline:
    """Tiny FLUX.1-dev-style pipeline: 32x32 images -> 8x8x4 latents -> 16 packed tokens of 16 channels."""
    tokenizer = build_tiny_clip_tokenizer()
    text_encoder = build_tiny_clip_text_encoder(tokenizer, seed)
    tokenizer_2 = build_tiny_t5_tokenizer()
    text_encoder_2 = build_tiny_t5_text_encoder(tokenizer_2, seed)
    with _seeded(seed, "transformer"):
        transformer = FluxTransformer2DModel(
            patch_size=1,
            in_channels=4 * TINY_LATENT_CHANNELS,
            num_layers=1,
            num_single_layers=1,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=32,
            pooled_projection_dim=32,
            guidance_embeds=True,
            axes_dims_rope=(4, 6, 6),
        ).eval()
    # FLUX's VAE: shift/scale latents, no quant convs.
    vae = _build_tiny_vae(
        seed,
        scaling_factor=0.3611,
        shift_factor=0.1159,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )
    scheduler = FlowMatchEulerDiscreteScheduler(**FLUX_DEV_SCHEDULER_CONFIG)
    return FluxPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        transformer=transformer,
    )


_BUILDERS = {"sd": build_tiny_sd_pipeline, "flux": build_tiny_flux_pipeline}


def save_tiny_pipeline(kind: str, path: str | Path, *, seed: int = 0) -> Path:
    """Build the tiny ``"sd"``, ``"flux"``, ``"flux_kontext"`` or ``"qwen_image_edit"`` pipeline (the
    ``model.family`` names) and ``save_pretrained`` it to ``path``; return the path."""
    from slas.testing.tiny_edit import EDIT_BUILDERS

    builders = {**_BUILDERS, **EDIT_BUILDERS}
    try:
        builder = builders[kind]
    except KeyError:
        raise ValueError(
            f"unknown tiny pipeline kind {kind!r}; expected one of {sorted(builders)}"
        ) from None
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    builder(seed).save_pretrained(out)
    return out
